"""POST /v1/embeddings on hf-encoder versions, through the tensor inference path
(service/inference/sync.py): the texts go as one BYTES input, the worker's runner tokenises,
mean-pools over the attention mask and L2-normalises (workers/inference/hf_runner.py: what
sentence-transformers' Transformer -> Pooling(mean) -> Normalize does), and the FP32 rows come
back as binary output, returned as floats or as base64 of little-endian float32 (as OpenAI), with
the number of tokens the worker counted as `usage`.

A lora-adapter version of an hf-encoder base (lineage `adapter_of`) is called by its own name:
the worker runs it on its base (workers/inference/adapter_versions.py). Like an hf-encoder with
a task head, an adapter with a head does not answer embeddings (400)."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import orjson

from model_store.registry import ResolvedVersion
from service.errors import InvalidInput, ModelFailed
from service.inference.sync import InferenceService
from service.tenancy import access
from service.tenancy.api_keys import Principal
from service.text.generation import TextService, split_model
from service.text.schemas import EmbeddingRequest, parse

EMBED_FORMAT = "hf-encoder"
ADAPTER_FORMAT = "lora-adapter"
WHAT = "/v1/embeddings"
OUTPUT = "embedding"


def _texts(req: EmbeddingRequest, max_inputs: int, max_chars: int) -> list[str]:
    texts = req.texts()
    if len(texts) > max_inputs:
        raise InvalidInput(f"input: at most {max_inputs} strings per request")
    if any(not t for t in texts):
        raise InvalidInput("input: strings must not be empty")
    if sum(len(t) for t in texts) > max_chars:
        raise InvalidInput(f"input: over {max_chars} characters in all")
    return texts


async def embeddings(
    text: TextService, inference: InferenceService, principal: Principal, body: bytes
) -> dict[str, Any]:
    req = parse(EmbeddingRequest, body)
    s = text.settings
    texts = _texts(req, s.max_embedding_inputs, s.max_prompt_chars)
    version = await _resolve(text, principal, req.model)
    out = version.signature.outputs
    if len(out) != 1 or out[0].name != OUTPUT:
        raise InvalidInput(f"model {req.model[:64]!r} has a task head: it does not answer embeddings")
    dim = int(out[0].shape[-1])
    if req.dimensions is not None and req.dimensions != dim:
        raise InvalidInput(f"dimensions: this model's embeddings have {dim} dimensions (no other size)")
    name, ref = split_model(req.model)
    oip = {
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}],
        "outputs": [{"name": OUTPUT, "parameters": {"binary_data": True}}],
    }
    reply = await inference.infer(principal, name, ref, orjson.dumps(oip))
    rows = _rows(reply.body, reply.header_length, len(texts), dim)
    data = [
        {"object": "embedding", "index": i, "embedding": _encode(row, req.encoding_format)}
        for i, row in enumerate(rows)
    ]
    return {
        "object": "list",
        "data": data,
        "model": req.model,
        # the worker tokenises (workers/inference/hf_runner.py) and says how many in its reply
        "usage": {"prompt_tokens": reply.prompt_tokens, "total_tokens": reply.prompt_tokens},
    }


async def _resolve(text: TextService, principal: Principal, model: str) -> ResolvedVersion:
    """The version `model` names, as the OIP routes resolve it; 400 unless it is an hf-encoder
    or a lora-adapter of one."""
    name, ref = split_model(model)
    access.check_model(principal, name)
    version = await text.resolver.resolve(principal.tenant_id, name, ref)
    if version.format == ADAPTER_FORMAT and version.adapter_of is not None:
        await text.adapter_base(model, version.adapter_of, EMBED_FORMAT, WHAT)
        return version
    if version.format != EMBED_FORMAT:
        raise InvalidInput(
            f"model {model[:64]!r} has format {version.format}; {WHAT} needs a model of format {EMBED_FORMAT}"
        )
    return version


def _rows(body: bytes, header_length: int | None, n: int, dim: int) -> np.ndarray:
    if header_length is None:
        raise ModelFailed("the model answered no embedding tensor")
    buf = body[header_length:]
    if len(buf) != n * dim * 4:
        raise ModelFailed("the model answered an embedding of the wrong size")
    return np.frombuffer(buf, dtype="<f4").reshape(n, dim)


def _encode(row: np.ndarray, fmt: str) -> list[float] | str:
    if fmt == "base64":
        return base64.b64encode(row.astype("<f4").tobytes()).decode()
    return [float(x) for x in row]
