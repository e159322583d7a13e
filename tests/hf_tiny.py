"""A tiny random BERT as an hf-encoder bundle, built by the tests (no download): a word-level
tokenizer over a small vocabulary, a 1-layer encoder with hidden size 32."""

from __future__ import annotations

import io
import json
import tarfile

import torch

WORDS = [
    *("the", "a", "goal", "match", "team", "coach", "won", "scored", "football", "league", "race"),
    *("chef", "bread", "soup", "pasta", "garlic", "baked", "cooked", "dinner", "kitchen", "tomato"),
    *("served", "trained", "final"),
]


def tiny_bundle(seed: int = 0, extra: dict[str, bytes] | None = None) -> bytes:
    import transformers
    from safetensors.torch import save
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[PAD]": 0, "[UNK]": 1} | {w: i + 2 for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    config = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(seed)
    model = transformers.BertModel(config, add_pooling_layer=False)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    files = {
        "config.json": json.dumps(config.to_dict()).encode(),
        "model.safetensors": save(state),
        "tokenizer.json": tok.to_str().encode(),
        **(extra or {}),
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, body in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


def topic_rows(n: int, seed: int) -> bytes:
    """JSONL text rows on two topics (sport 0, cooking 1) over the tiny vocabulary."""
    g = torch.Generator().manual_seed(seed)
    sport, food = WORDS[2:11], WORDS[11:22]
    lines = []
    for i in range(n):
        words = food if i % 2 else sport
        picks = [words[int(j)] for j in torch.randint(len(words), (4,), generator=g)]
        lines.append(json.dumps({"text": " ".join(["the", *picks]), "label": i % 2}))
    return ("\n".join(lines) + "\n").encode()
