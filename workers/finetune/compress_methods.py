"""Quantise and export, inside the fenced compression child (workers/finetune/compress_child.py).

- quantize int8, hf-encoder: every linear weight of the encoder to int8 with a per-row scale
  (symmetric), the other tensors to fp16, in the bundle's safetensors with `kiln_quant.json`; the
  runner dequantises and applies torch.ao dynamic int8 to the linear layers at load. (A torch.ao
  quantised module itself cannot be stored: TorchScript's op policy refuses `quantized::` ops and
  packed-parameter custom classes, and anything else would be pickle.)
- quantize int8, TorchScript or ONNX: onnxruntime.quantization dynamic int8 on the ONNX graph (a
  TorchScript version is exported to ONNX first): the result is an ONNX version.
- quantize fp16, hf-encoder: every floating tensor stored as fp16.
- export: TorchScript or hf-encoder to ONNX (opset, dynamic batch axis; an hf-encoder's graph
  takes its tokens tensor [batch, 3, length] and answers what the bundle answers).
"""

from __future__ import annotations

import io
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from model_store.hf_encoder import QUANT_CONFIG, SCALE_SUFFIX, bundle_signature, open_bundle
from model_store.limits import ArtifactLimits
from model_store.signature import Signature
from workers.common.hf_model import build_encoder, load_head, tar_files
from workers.finetune.model import load_scripted


@dataclass(slots=True)
class Compressed:
    data: bytes
    format: str
    sig: Signature
    metrics: dict[str, Any] = field(default_factory=dict)
    text_tokens: bool = False  # an ONNX graph that takes an hf-encoder's tokens tensor


def _tmp(name: str) -> Path:
    return Path(os.environ["TMPDIR"]) / name


# hf-encoder weights --------------------------------------------------------------------------------
def int8_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: (q, scale) with w ~= q * scale[:, None]."""
    scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    q = torch.round(w / scale.unsqueeze(1)).clamp(-127, 127).to(torch.int8)
    return q, scale.float()


def compressed_state(encoder: Any, scheme: str) -> dict[str, torch.Tensor]:
    linear = {f"{n}.weight" for n, m in encoder.named_modules() if isinstance(m, torch.nn.Linear)}
    out: dict[str, torch.Tensor] = {}
    for name, t in encoder.state_dict().items():
        t = t.detach().cpu()
        if scheme == "dynamic-int8" and name in linear:
            out[name], out[name + SCALE_SUFFIX] = int8_rows(t.float())
        elif t.is_floating_point():
            out[name] = t.half()
        else:
            out[name] = t
    return {k: v.contiguous() for k, v in out.items()}


def quantize_hf(data: bytes, scheme: str) -> Compressed:
    from safetensors.torch import save

    bundle = open_bundle(io.BytesIO(data), ArtifactLimits())
    encoder, _ = build_encoder(bundle, serve=False)
    files = dict(bundle.files)
    files["model.safetensors"] = save(compressed_state(encoder, scheme), metadata={"format": "pt"})
    files[QUANT_CONFIG] = json.dumps({"scheme": scheme}).encode()
    sig = _bundle_sig(bundle)
    return Compressed(tar_files(files), "hf-encoder", sig, {"scheme_" + scheme.replace("-", "_"): True})


def _bundle_sig(bundle: Any) -> Signature:
    return bundle_signature(bundle)


# ONNX ------------------------------------------------------------------------------------------------
def quantize_onnx(data: bytes, sig: Signature, text_tokens: bool = False) -> Compressed:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = _tmp("source.onnx"), _tmp("quantized.onnx")
    src.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_dynamic(
            str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"]
        )
    out = dst.read_bytes()
    src.unlink()
    dst.unlink()
    return Compressed(out, "onnx", sig, {}, text_tokens)


def _export(
    module: torch.nn.Module,
    sample: tuple[torch.Tensor, ...],
    names: tuple[list[str], list[str]],
    axes: dict[str, dict[int, str]],
    opset: int,
) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            sample,
            buf,  # type: ignore[arg-type]  # a file object is accepted
            input_names=names[0],
            output_names=names[1],
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )
    return buf.getvalue()


def export_torchscript(data: bytes, sig: Signature, opset: int) -> Compressed:
    module = load_scripted(data, torch.device("cpu")).eval()
    sample = tuple(
        torch.zeros(
            tuple(2 if d == -1 else d for d in t.shape),
            dtype=torch.float64 if t.datatype == "FP64" else torch.float32,
        )
        for t in sig.inputs
    )
    names = ([t.name for t in sig.inputs], [t.name for t in sig.outputs])
    axes = {n: {0: "batch"} for n in names[0] + names[1]}
    return Compressed(_export(module, sample, names, axes, opset), "onnx", sig)


class _TokensEncoder(torch.nn.Module):
    """An hf-encoder as one graph: tokens [batch, 3, length] -> what the bundle serves."""

    def __init__(
        self, encoder: Any, wants_types: bool, head: torch.nn.Linear | None, task: str | None
    ) -> None:
        super().__init__()
        self.encoder, self.wants_types, self.head, self.task = encoder, wants_types, head, task

    def forward(self, x: torch.Tensor) -> Any:
        ids, mask = x[:, 0], x[:, 1]
        kwargs = {"input_ids": ids, "attention_mask": mask}
        if self.wants_types:
            kwargs["token_type_ids"] = x[:, 2]
        hidden = self.encoder(**kwargs).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        emb = torch.nn.functional.normalize(pooled, p=2, dim=1)
        if self.head is None:
            return emb
        out = self.head(emb)
        return (out, torch.softmax(out, dim=1)) if self.task == "classification" else out


def export_hf(data: bytes, opset: int, encode: Any) -> Compressed:
    bundle = open_bundle(io.BytesIO(data), ArtifactLimits())
    encoder, wants_types = build_encoder(bundle, serve=False)
    encoder.config._attn_implementation = "eager"  # one traceable attention path
    head = load_head(bundle)
    task = bundle.head["task"] if bundle.head else None
    module = _TokensEncoder(encoder, wants_types, head, task).eval()
    outs = [o.name for o in _bundle_sig(bundle).outputs]
    sample = encode(["a first sample text", "and a second, longer sample text"])
    axes = {"tokens": {0: "batch", 2: "length"}, **{n: {0: "batch"} for n in outs}}
    onnx_bytes = _export(module, (sample,), (["tokens"], outs), axes, opset)
    width = int(bundle.hidden_size) if head is None else int(bundle.head["num_outputs"])  # type: ignore[index]
    sig = tokens_signature(outs, width)
    return Compressed(onnx_bytes, "onnx", sig, {}, True)


def tokens_signature(outputs: list[str], width: int) -> Signature:
    return Signature.model_validate(
        {
            "inputs": [{"name": "tokens", "datatype": "INT64", "shape": [-1, 3, -1]}],
            "outputs": [{"name": n, "datatype": "FP32", "shape": [-1, width]} for n in outputs],
        }
    )
