"""Chat rows (workers.contract.chat_data) as token ids and loss labels for causal-LM training.

Chat rows are rendered with the tokenizer's own chat template; the loss falls on assistant
messages only (their content and the end-of-turn token the template puts after it, e.g.
`<|im_end|>`), never on system or user messages or the template's headers, and not on assistant
messages of weight 0. A message's tokens are found by rendering the conversation up to it (with
the generation prompt) and through it: the tokens in between are its own. Where a template breaks
that (the prefix does not tokenize as a prefix of the whole), character offsets of the whole
rendering are used; where the prefix is not even a text prefix (a template that renders earlier
turns differently once later ones follow), the message's content is looked up in the rendering.
Prompt/completion rows are `prompt + completion + eos`, the loss on the completion and eos.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jinja2
import torch

from workers.contract.chat_data import ChatRow
from workers.contract.dataset_base import Issue

IGNORE = -100  # a label with no loss (torch's cross_entropy ignore_index)


@dataclass
class Encoded:
    ids: torch.Tensor  # LongTensor [N, L], right-padded with the pad id
    mask: torch.Tensor  # LongTensor [N, L]: 1 on tokens, 0 on padding
    labels: torch.Tensor  # LongTensor [N, L]: the id where a token is learned, IGNORE elsewhere
    tokens: list[int]  # per row, its unpadded length
    loss_tokens: int  # labels that are not IGNORE, all rows together


class _RowFailed(Exception):
    pass


def encode_rows(
    tokenizer: Any, rows: Sequence[ChatRow], lines: Sequence[int], max_len: int
) -> tuple[Encoded, list[Issue]]:
    """Token ids, attention mask and labels for each row; a row that cannot be encoded, or is
    longer than `max_len` tokens, is an issue of its line and is left out."""
    issues: list[Issue] = []
    kept: list[tuple[list[int], list[int]]] = []
    for row, line in zip(rows, lines, strict=True):
        try:
            ids, labels = _encode(tokenizer, row, max_len)
        except _RowFailed as exc:
            issues.append(Issue(line, "messages", str(exc)))
            continue
        kept.append((ids, labels))
    return _pad(kept, pad_id(tokenizer)), issues


def pad_id(tokenizer: Any) -> int:
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if isinstance(value, int):
            return value
    return 0


def _encode(tokenizer: Any, row: ChatRow, max_len: int) -> tuple[list[int], list[int]]:
    if row.kind == "completion":
        ids, labels = _completion(tokenizer, row)
    else:
        ids, labels = _chat(tokenizer, row, max_len)
    if len(ids) > max_len:
        raise _RowFailed(f"is {len(ids)} tokens, longer than the model's context of {max_len}")
    if all(label == IGNORE for label in labels):
        raise _RowFailed("has no assistant tokens to learn from once rendered by the model's template")
    return ids, labels


def _completion(tokenizer: Any, row: ChatRow) -> tuple[list[int], list[int]]:
    prompt, completion = row.messages[0].content, row.messages[1].content
    head = list(tokenizer(prompt)["input_ids"])  # with the special tokens the model starts with
    tail = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
    eos = tokenizer.eos_token_id
    if isinstance(eos, int):
        tail.append(eos)
    return head + tail, [IGNORE] * len(head) + tail


def _chat(tokenizer: Any, row: ChatRow, max_len: int) -> tuple[list[int], list[int]]:
    if not getattr(tokenizer, "chat_template", None):
        raise _RowFailed("the model's tokenizer has no chat template: give prompt/completion rows")
    messages = [{"role": m.role, "content": m.content} for m in row.messages]
    text = _render(tokenizer, messages, False)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=bool(tokenizer.is_fast))
    ids = list(enc["input_ids"])
    if len(ids) > max_len:  # before the spans: they cost a rendering per assistant message
        return ids, []
    offsets = [tuple(o) for o in enc["offset_mapping"]] if "offset_mapping" in enc else None
    labels = [IGNORE] * len(ids)
    special = set(tokenizer.all_special_ids)
    cursor = 0
    for i, msg in enumerate(row.messages):
        if msg.role != "assistant":
            continue
        start, end, cursor = _span(tokenizer, messages, i, text, (ids, offsets, special), cursor)
        end = _trim(tokenizer, ids, start, end, special)
        if msg.weight == 0:
            continue
        if end <= start:
            raise _RowFailed(f"messages[{i}]: the model's chat template does not render it")
        labels[start:end] = ids[start:end]
    return ids, labels


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    try:
        text = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )
    except (jinja2.TemplateError, ValueError, TypeError, KeyError, IndexError) as exc:
        raise _RowFailed(f"the model's chat template refused the conversation: {str(exc)[:200]}") from exc
    if not isinstance(text, str):
        raise _RowFailed("the model's chat template did not render text")
    return text


def _span(
    tokenizer: Any,
    messages: list[dict[str, str]],
    i: int,
    text: str,
    whole: tuple[list[int], list[tuple[int, int]] | None, set[int]],
    cursor: int,
) -> tuple[int, int, int]:
    """Token span [start, end) of assistant message i in the whole rendering (ids, offsets,
    special ids), and the character after it (where the next message's search starts)."""
    try:
        before = _render(tokenizer, messages[:i], True)
        through = _render(tokenizer, messages[: i + 1], False)
    except _RowFailed:  # e.g. a template that cannot render no messages at all
        return _search(messages[i]["content"], text, whole, cursor, i)
    if not (text.startswith(before) and text.startswith(through)):
        return _search(messages[i]["content"], text, whole, cursor, i)
    ids, offsets, _ = whole
    ids_before = _tokens(tokenizer, before)
    ids_through = _tokens(tokenizer, through)
    if ids[: len(ids_before)] == ids_before and ids[: len(ids_through)] == ids_through:
        return len(ids_before), len(ids_through), len(through)
    if offsets is None:
        raise _RowFailed(f"messages[{i}]: the model's chat template splits tokens across turns")
    start, end = _chars_to_tokens(offsets, len(before), len(through))
    return start, end, len(through)


def _tokens(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def _chars_to_tokens(offsets: list[tuple[int, int]], first: int, last: int) -> tuple[int, int]:
    """Tokens that overlap characters [first, last): one that straddles a boundary (a merge of a
    header's last character and the content's first) holds content, so it is learned."""
    inside = [t for t, (s, e) in enumerate(offsets) if s < last and e > first and e > s]
    if not inside:
        return 0, 0
    return inside[0], inside[-1] + 1


def _search(
    content: str,
    text: str,
    whole: tuple[list[int], list[tuple[int, int]] | None, set[int]],
    cursor: int,
    i: int,
) -> tuple[int, int, int]:
    """The message's content found verbatim in the rendering (after the previous message), plus
    the token right after it (the end of turn) when that is a special token."""
    ids, offsets, special = whole
    pos = text.find(content, cursor)
    if pos < 0 or offsets is None:
        raise _RowFailed(f"messages[{i}]: the model's chat template does not render it verbatim")
    start, end = _chars_to_tokens(offsets, pos, pos + len(content))
    if end < len(ids) and ids[end] in special:
        end += 1
    return start, end, pos + len(content)


def _trim(tokenizer: Any, ids: list[int], start: int, end: int, special: set[int]) -> int:
    """Cut what the template puts after an assistant message's end-of-turn token (a newline
    before the next turn): it is no part of what the model should learn to say."""
    last = max((t for t in range(start, end) if ids[t] in special), default=None)
    if last is None or last + 1 >= end:
        return end
    if tokenizer.decode(ids[last + 1 : end]).strip():
        return end
    return last + 1


def _pad(kept: list[tuple[list[int], list[int]]], pad: int) -> Encoded:
    width = max((len(ids) for ids, _ in kept), default=0)
    n = len(kept)
    ids_t = torch.full((n, width), pad, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    labels_t = torch.full((n, width), IGNORE, dtype=torch.long)
    for r, (ids, labels) in enumerate(kept):
        ids_t[r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[r, : len(ids)] = 1
        labels_t[r, : len(labels)] = torch.tensor(labels, dtype=torch.long)
    loss = int((labels_t != IGNORE).sum())
    return Encoded(ids_t, mask, labels_t, [len(ids) for ids, _ in kept], loss)
