"""Runner for the `hf-encoder` format: tokenise on the worker, run the encoder, mean-pool over
the attention mask, L2-normalise (what sentence-transformers' Transformer -> Pooling(mean) ->
Normalize pipeline computes). The model is built from its config (no remote code) and its
weights come from safetensors bytes (never pickle); nothing is fetched from a hub."""

from __future__ import annotations

from typing import Any

import numpy as np

from model_store.hf_encoder import open_bundle
from model_store.registry import ResolvedVersion
from workers.errors import LoadError

_IGNORABLE = ("position_ids", "pooler.")


class HFEncoderRunner:
    def __init__(self, version: ResolvedVersion, data: bytes, device: str, threads: int) -> None:
        import torch
        import transformers
        from safetensors.torch import load as load_safetensors
        from tokenizers import Tokenizer

        if threads:
            torch.set_num_threads(threads)
        bundle = open_bundle(data)
        config = transformers.AutoConfig.for_model(**bundle.config)
        model: Any = transformers.AutoModel.from_config(config)
        state = load_safetensors(bundle.files["model.safetensors"])
        missing, _unexpected = model.load_state_dict(state, strict=False)
        if [k for k in missing if not any(tag in k for tag in _IGNORABLE)]:
            raise LoadError("model.safetensors lacks weights the config needs")
        self.device = device
        self._torch = torch
        self._device = torch.device(device)
        self._model = model.to(self._device).eval()
        self._wants_types = "token_type_ids" in model.forward.__code__.co_varnames
        tokenizer = Tokenizer.from_str(bundle.files["tokenizer.json"].decode("utf-8"))
        tokenizer.enable_truncation(max_length=bundle.max_seq_length)
        pad_id = int(bundle.config.get("pad_token_id") or 0)
        tokenizer.enable_padding(pad_id=pad_id, pad_token=tokenizer.id_to_token(pad_id) or "[PAD]")
        self._tokenizer = tokenizer

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from workers.runners import InputRejected

        torch = self._torch
        try:
            texts = [
                b.decode("utf-8") if isinstance(b, bytes) else str(b) for b in inputs["text"].reshape(-1)
            ]
        except UnicodeDecodeError as exc:
            raise InputRejected("input 'text' must be UTF-8 text") from exc
        if not texts:
            return {"embedding": np.zeros((0, self._model.config.hidden_size), dtype=np.float32)}
        enc = self._tokenizer.encode_batch(texts)
        ids = torch.tensor([e.ids for e in enc], device=self._device)
        mask = torch.tensor([e.attention_mask for e in enc], device=self._device)
        kwargs = {"input_ids": ids, "attention_mask": mask}
        if self._wants_types:
            kwargs["token_type_ids"] = torch.tensor([e.type_ids for e in enc], device=self._device)
        with torch.inference_mode():
            hidden = self._model(**kwargs).last_hidden_state
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
            emb = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return {"embedding": emb.float().cpu().numpy()}
