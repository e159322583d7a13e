"""Runner for the `hf-encoder` format: tokenise on the worker, run the encoder, mean-pool over
the attention mask, L2-normalise (what sentence-transformers' Transformer -> Pooling(mean) ->
Normalize pipeline computes). The model is built from its config (no remote code) and its
weights come from safetensors bytes (never pickle); nothing is fetched from a hub.

A bundle with a head (a fine-tuned version) answers the head's outputs instead of the embedding:
`logits` and `probabilities` for classification, `prediction` for regression (its signature).
Each batch also returns its rows' token counts (runtime.PROMPT_TOKENS), which the worker puts in
each request's reply (the embeddings route's `usage`).

The same runner serves the LoRA adapter versions of its version on its one copy of the encoder
(`add_adapter`, `run_adapter`: workers/inference/encoder_adapters.py)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from model_store.hf_encoder import bundle_signature, open_bundle
from model_store.limits import ArtifactLimits
from model_store.registry import ResolvedVersion
from workers.common.hf_model import build_encoder, embed, load_head, make_tokenizer, tokenize
from workers.inference.encoder_adapters import EncoderAdapters
from workers.inference.runtime import PROMPT_TOKENS, InputRejected


class HFEncoderRunner:
    def __init__(
        self, version: ResolvedVersion, data: bytes, device: str, threads: int, limits: ArtifactLimits
    ) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        bundle = open_bundle(io.BytesIO(data), limits)  # refused before anything is built
        # dynamic int8 (a quantised bundle) runs on CPU; on a GPU its weights run dequantised
        model, self._wants_types = build_encoder(bundle, serve=device == "cpu")
        self.device = device
        self._torch = torch
        self._device = torch.device(device)
        self._model = model.to(self._device).eval()
        head = load_head(bundle)
        self._head = head.to(self._device).eval() if head is not None else None
        self._task = bundle.head["task"] if bundle.head else None
        self._outputs = [(o.name, int(o.shape[-1])) for o in bundle_signature(bundle).outputs]
        self._tokenizer = make_tokenizer(bundle)
        self._limits = limits
        self.adapters = EncoderAdapters(self._model, bundle.hidden_size, self._device)

    def _texts(self, inputs: dict[str, np.ndarray]) -> list[str]:
        try:
            return [b.decode("utf-8") if isinstance(b, bytes) else str(b) for b in inputs["text"].reshape(-1)]
        except UnicodeDecodeError as exc:
            raise InputRejected("input 'text' must be UTF-8 text") from exc

    def has_adapter(self, key: int) -> bool:
        return self.adapters.has(key)

    def add_adapter(self, key: int, data: bytes, capacity: int) -> None:
        self.adapters.add(key, data, capacity, self._limits)

    def run_adapter(self, inputs: dict[str, np.ndarray], key: int) -> dict[str, np.ndarray]:
        """A batch of adapter version `key` (AdapterMissing when it is not loaded here)."""
        texts = self._texts(inputs)
        x = tokenize(self._tokenizer, texts or ["."]).to(self._device)  # no texts: 0 rows of each output

        def pooled() -> Any:
            return embed(self._model, self._wants_types, x)

        with self._torch.inference_mode():
            out = self.adapters.run(key, pooled)
        if not texts:
            return {name: arr[:0] for name, arr in out.items()}
        return {**out, PROMPT_TOKENS: _tokens(x)}

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = self._texts(inputs)
        if not texts:
            return {name: np.zeros((0, width), dtype=np.float32) for name, width in self._outputs}
        x = tokenize(self._tokenizer, texts).to(self._device)
        return {**self._outputs_of(x), PROMPT_TOKENS: _tokens(x)}

    def _outputs_of(self, x: Any) -> dict[str, np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            emb = embed(self._model, self._wants_types, x)
            if self._head is None:
                return {"embedding": emb.float().cpu().numpy()}
            out = self._head(emb).float()
            if self._task == "classification":
                probs = torch.softmax(out, dim=1)
                return {"logits": out.cpu().numpy(), "probabilities": probs.cpu().numpy()}
        return {"prediction": out.cpu().numpy()}


def _tokens(x: Any) -> np.ndarray:
    """Each row's tokens (special tokens included, padding not): its attention mask's sum."""
    return np.asarray(x[:, 1].sum(dim=1).cpu().numpy(), dtype=np.int64)
