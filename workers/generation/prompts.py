"""A generation request to what the model takes: prompt token ids (the chat template applied in
chat mode) and continuous batching's per-request sampling arguments."""

from __future__ import annotations

from typing import Any

from workers.contract.generation import GenParams, GenRequestMsg
from workers.generation.backend import GenInputError


def prompt_ids(tokenizer: Any, req: GenRequestMsg) -> list[int]:
    """The prompt's token ids. Chat: the model's chat template with the generation prompt added
    (its special tokens are in the template, so none are added again); completion: the text
    tokenised as the model expects (with its BOS where it uses one)."""
    if req.mode == "chat":
        if not req.messages:
            raise GenInputError("messages must not be empty")
        if not getattr(tokenizer, "chat_template", None):
            raise GenInputError("this model has no chat template; use the completions endpoint")
        try:
            text = tokenizer.apply_chat_template(req.messages, add_generation_prompt=True, tokenize=False)
        except Exception as exc:  # jinja's TemplateError, or the template's raise_exception
            raise GenInputError(f"the model's chat template refused the messages: {str(exc)[:200]}") from exc
        ids = tokenizer.encode(str(text), add_special_tokens=False)
    else:
        ids = tokenizer.encode(req.prompt or "", add_special_tokens=True)
    if not ids:
        raise GenInputError("the prompt is empty")
    return [int(i) for i in ids]


def sampling(p: GenParams, vocab: int) -> dict[str, Any]:
    """Continuous batching's per-request warper arguments. Greedy (temperature 0) is top_k 1 at
    temperature 1: one token keeps all the probability, so sampling picks the argmax."""
    if p.temperature == 0.0:
        return {"temperature": 1.0, "top_k": 1, "top_p": 1.0}
    return {"temperature": float(p.temperature), "top_k": int(p.top_k or vocab), "top_p": float(p.top_p)}
