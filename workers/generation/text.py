"""Generated tokens to the text a client sees: incremental detokenisation and stop sequences.

`Detokenizer` turns a growing list of token ids into text deltas without splitting a character:
it decodes a short window (the last tokens already shown plus the new ones) and holds back a
delta that ends in U+FFFD (a multi-byte character whose remaining bytes are in tokens still to
come). Seeded with the prompt's last tokens, so a first token that begins with a word boundary
keeps its space (SentencePiece drops it when a token is decoded alone). The window approach is
vLLM's and text-generation-inference's.

`StopText` applies stop sequences to that text: it never lets out text past the start of a
stop sequence, and holds back a tail that could still become one.
"""

from __future__ import annotations

from typing import Any

_PROMPT_TAIL = 4
_REPLACEMENT = "\ufffd"


class Detokenizer:
    def __init__(self, tokenizer: Any, prompt_ids: list[int]) -> None:
        self._tok = tokenizer
        self._ids = list(prompt_ids[-_PROMPT_TAIL:])
        self._prefix = 0  # start of the decoding window
        self._read = len(self._ids)  # tokens already turned into text

    def _decode(self, ids: list[int]) -> str:
        return str(self._tok.decode(ids, skip_special_tokens=True))

    def add(self, ids: list[int]) -> str:
        """The text the new tokens add (possibly empty while a character is incomplete)."""
        self._ids.extend(ids)
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) > len(before) and not after.endswith(_REPLACEMENT):
            self._prefix, self._read = self._read, len(self._ids)
            return after[len(before) :]
        return ""

    def flush(self) -> str:
        """What is left once the sequence has ended (an incomplete character shows as U+FFFD)."""
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return after[len(before) :] if len(after) > len(before) else ""


class StopText:
    def __init__(self, stops: list[str]) -> None:
        self._stops = [s for s in stops if s]
        self._longest = max((len(s) for s in self._stops), default=0)
        self._text = ""
        self._sent = 0  # characters of _text already let out
        self.stopped = False

    def push(self, delta: str) -> str:
        """The text that may go out now; sets `stopped` (and lets nothing out past it) on a stop."""
        if self.stopped:
            return ""
        self._text += delta
        if not self._stops:
            return self._release(len(self._text))
        start = max(0, self._sent - self._longest + 1)
        hits = [i for i in (self._text.find(s, start) for s in self._stops) if i >= 0]
        if hits:
            self.stopped = True
            return self._release(max(min(hits), self._sent))
        return self._release(max(self._sent, len(self._text) - self._partial()))

    def flush(self) -> str:
        """The held-back tail, once the sequence has ended without a stop."""
        return "" if self.stopped else self._release(len(self._text))

    def _partial(self) -> int:
        """Length of the longest tail of the text that begins some stop sequence."""
        for k in range(min(self._longest - 1, len(self._text)), 0, -1):
            tail = self._text[-k:]
            if any(s.startswith(tail) for s in self._stops):
                return k
        return 0

    def _release(self, end: int) -> str:
        out = self._text[self._sent : end]
        self._sent = end
        return out
