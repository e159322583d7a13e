"""The `hf-encoder` model in torch, shared by the runner (serving) and the trainer (fine-tuning).

The encoder is built from config.json (no remote code) with weights from safetensors bytes (never
pickle); texts are tokenised here. A batch of tokenised texts travels as one int64 tensor
[N, 3, L] (input ids, attention mask, token type ids), so the generic training loop indexes,
batches and checkpoints it like any other input tensor. The head is one linear layer on the
mean-pooled, L2-normalised embedding (the embedding the base version serves).
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from typing import Any

import torch
from torch.nn import functional as F

from model_store.hf_encoder import (
    HEAD_CONFIG,
    HEAD_WEIGHTS,
    QUANT_CONFIG,
    SCALE_SUFFIX,
    EncoderBundle,
    open_bundle,
)
from model_store.limits import ArtifactLimits
from workers.contract.errors import LoadError

_IGNORABLE = ("position_ids", "pooler.")
Encode = Callable[[list[str]], torch.Tensor]


def build_encoder(bundle: EncoderBundle, serve: bool = True) -> tuple[Any, bool]:
    """The encoder with the bundle's weights (on CPU, eval mode) and whether it takes token types.
    A dynamic-int8 bundle is dequantised, and for serving (`serve`) its linear layers become
    torch.ao dynamic int8 ones again (int8 weights, activations quantised per batch)."""
    import transformers
    from safetensors.torch import load as load_safetensors

    config = transformers.AutoConfig.for_model(**bundle.config)
    model: Any = transformers.AutoModel.from_config(config)
    state = dequantized(load_safetensors(bundle.files["model.safetensors"]))
    missing, _unexpected = model.load_state_dict(state, strict=False)
    if [k for k in missing if not any(tag in k for tag in _IGNORABLE)]:
        raise LoadError("model.safetensors lacks weights the config needs")
    if serve and bundle.quant in ("dynamic-int8", "dynamic-int8-all"):
        model = quantize_dynamic_int8(model, every_linear=bundle.quant == "dynamic-int8-all")
    return model.eval(), "token_type_ids" in model.forward.__code__.co_varnames


def quantize_dynamic_int8(model: Any, every_linear: bool = False) -> Any:
    """torch.ao dynamic int8 (per output channel) on the attention projections, or on every linear
    layer: on MiniLM the feed-forward layers' activations lose most (cosine to fp32 0.995 -> 0.955)."""
    import warnings

    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    names = [
        n
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and (every_linear or ".attention." in f".{n}.")
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spec = dict.fromkeys(names, per_channel_dynamic_qconfig)
        return quantize_dynamic(model.cpu(), spec, dtype=torch.qint8)


def dequantized(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """FP32 tensors from a compressed state: I8 weights times their per-row scale, F16 widened."""
    out: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        if name.endswith(SCALE_SUFFIX):
            continue
        scale = state.get(name + SCALE_SUFFIX)
        if scale is not None and t.dtype == torch.int8 and scale.shape == t.shape[:1]:
            out[name] = t.float() * scale.float().unsqueeze(1)
        elif t.is_floating_point():
            out[name] = t.float()
        else:
            out[name] = t
    return out


def make_tokenizer(bundle: EncoderBundle) -> Any:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(bundle.files["tokenizer.json"].decode("utf-8"))
    tokenizer.enable_truncation(max_length=bundle.max_seq_length)
    pad_id = int(bundle.config.get("pad_token_id") or 0)
    tokenizer.enable_padding(pad_id=pad_id, pad_token=tokenizer.id_to_token(pad_id) or "[PAD]")
    return tokenizer


def tokenize(tokenizer: Any, texts: list[str]) -> torch.Tensor:
    """[N, 3, L] int64: input ids, attention mask, token type ids (padded to the longest text)."""
    enc = tokenizer.encode_batch(texts)
    return torch.tensor([[e.ids, e.attention_mask, e.type_ids] for e in enc], dtype=torch.int64)


def embed(encoder: Any, wants_types: bool, x: torch.Tensor) -> torch.Tensor:
    """Mean pooling over the attention mask, then L2 normalisation (sentence-transformers' pipeline)."""
    width = max(1, int(x[:, 1].sum(dim=1).max())) if x.shape[0] else x.shape[2]
    x = x[:, :, :width]  # padding shared by the whole batch (right padding) is dropped
    ids, mask = x[:, 0], x[:, 1]
    kwargs = {"input_ids": ids, "attention_mask": mask}
    if wants_types:
        kwargs["token_type_ids"] = x[:, 2]
    hidden = encoder(**kwargs).last_hidden_state
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
    return F.normalize(pooled, p=2, dim=1)


def load_head(bundle: EncoderBundle) -> torch.nn.Linear | None:
    if bundle.head is None:
        return None
    from safetensors.torch import load as load_safetensors

    state = load_safetensors(bundle.files[HEAD_WEIGHTS])
    head = torch.nn.Linear(bundle.hidden_size, bundle.head["num_outputs"])
    head.load_state_dict(state)
    return head


class EncoderWithHead(torch.nn.Module):
    """Encoder -> mean pooling -> normalise -> (dropout) -> linear head. The head is registered
    last, so `freeze: backbone` (everything but the owner of the last parameter) trains only it;
    with a frozen encoder the encoder stays in eval mode and runs without autograd."""

    def __init__(self, encoder: Any, wants_types: bool, head: torch.nn.Linear) -> None:
        super().__init__()
        self.encoder = encoder
        self.wants_types = wants_types
        self.dropout = 0.0
        self.head = head

    def encoder_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.encoder.parameters())

    def train(self, mode: bool = True) -> EncoderWithHead:
        super().train(mode)
        if mode and self.encoder_frozen():
            self.encoder.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.encoder_frozen()):
            emb = embed(self.encoder, self.wants_types, x)
        if self.training and self.dropout > 0:
            emb = F.dropout(emb, p=self.dropout, training=True)
        return self.head(emb)


def for_finetune(
    data: bytes,
    device: torch.device,
    task: str,
    num_outputs: int,
    limits: ArtifactLimits | None = None,
) -> tuple[EncoderWithHead, Encode, EncoderBundle]:
    """The model to fine-tune (the bundle's own head when it serves the same task, else a new one
    with num_outputs outputs; seeded by the caller) and the function that turns texts into its
    input tensor."""
    bundle = open_bundle(io.BytesIO(data), limits or ArtifactLimits())
    encoder, wants_types = build_encoder(bundle, serve=False)
    own = load_head(bundle) if bundle.head is not None and bundle.head["task"] == task else None
    head = own or torch.nn.Linear(bundle.hidden_size, num_outputs)
    module = EncoderWithHead(encoder, wants_types, head).to(device)
    tokenizer = make_tokenizer(bundle)
    return module, lambda texts: tokenize(tokenizer, texts), bundle


def export_bundle(module: EncoderWithHead, bundle: EncoderBundle, task: str) -> bytes:
    """The fine-tuned version: the base bundle's files with the trained encoder weights and the
    head (config + safetensors), as a tar. Deterministic for the same weights."""
    from safetensors.torch import save as save_safetensors

    def tensors(mod: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in mod.state_dict().items()}

    head = module.head
    files = {k: v for k, v in bundle.files.items() if k != QUANT_CONFIG}  # trained in fp32
    files["model.safetensors"] = save_safetensors(tensors(module.encoder), metadata={"format": "pt"})
    files[HEAD_WEIGHTS] = save_safetensors(tensors(head))
    files[HEAD_CONFIG] = json.dumps({"task": task, "num_outputs": int(head.weight.shape[0])}).encode()
    return tar_files(files)


def tar_files(files: dict[str, bytes]) -> bytes:
    """A bundle's files as a tar (sorted, fixed modes: deterministic for the same files)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(files[name]))
    return buf.getvalue()
