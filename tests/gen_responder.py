"""A scripted stand-in for the generation worker, for gateway tests: a thread on the real Redis
that reads GenRequestMsg entries from one version's generation stream and answers with
GenChunkMsg chunks on the request's reply stream, meters tokens as the worker does
(workers/contract/usage.py::record_tokens) and honours the cancel key.

What it answers depends on the last message (or the prompt):
    "ERROR_FIRST"  an error chunk before any text (code invalid_input)
    "ERROR_MID"    two words, then an error chunk (code model_error)
    "SLOW"         one word every 20 ms until cancelled (or 2000 words)
    otherwise      the words of REPLY, one chunk each (cut at max_tokens: finish "length")
Prompt tokens are the prompt's whitespace-separated words."""

from __future__ import annotations

import threading
import time

import redis

from workers.contract.generation import GenChunkMsg, GenErrorCode, GenRequestMsg, GenUsage
from workers.contract.redis_keys import RedisKeys
from workers.contract.usage import TokenCharge, record_tokens

REPLY = "hello from the kiln responder"


class Responder:
    def __init__(self, redis_url: str, prefix: str, version_id: int, model: str = "chat") -> None:
        self.redis = redis.Redis.from_url(redis_url)
        self.prefix = prefix
        self.keys = RedisKeys(prefix)
        self.stream = self.keys.gen_stream(version_id)
        self.version_id = version_id
        self.model = model
        self.requests: list[GenRequestMsg] = []
        self.cancelled: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Responder:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.redis.close()

    def _run(self) -> None:
        last = "0-0"
        while not self._stop.is_set():
            resp = self.redis.xread({self.stream: last}, count=16, block=100)
            for _stream, entries in resp or ():  # type: ignore[union-attr]
                for entry_id, fields in entries:
                    last = entry_id
                    msg = GenRequestMsg.from_fields(fields)
                    self.requests.append(msg)
                    threading.Thread(target=self._answer, args=(msg,), daemon=True).start()

    def _send(self, msg: GenRequestMsg, chunk: GenChunkMsg) -> None:
        self.redis.xadd(msg.reply_to, chunk.to_fields())  # type: ignore[arg-type]

    def _answer(self, msg: GenRequestMsg) -> None:
        text = msg.messages[-1]["content"] if msg.messages else (msg.prompt or "")
        prompt_words = " ".join(m["content"] for m in msg.messages) if msg.messages else text
        prompt_tokens = len(prompt_words.split())
        if "ERROR_FIRST" in text:
            self._send(msg, GenChunkMsg.failure(msg.request_id, 0, GenErrorCode.INVALID_INPUT, "bad prompt"))
            return
        seq, generated, finish = 0, 0, "stop"
        for index in range(msg.params.n):
            words, finish = self._words(msg, text)
            for i, word in enumerate(words):
                if "SLOW" in text:
                    if self.redis.exists(self.keys.gen_cancel(msg.request_id)):
                        self.cancelled.add(msg.request_id)
                        self._send(msg, GenChunkMsg(msg.request_id, seq, finish="cancelled", done=True))
                        return
                    time.sleep(0.02)
                if "ERROR_MID" in text and i == 2:
                    self._send(
                        msg, GenChunkMsg.failure(msg.request_id, seq, GenErrorCode.MODEL_ERROR, "boom")
                    )
                    return
                piece = (" " if i else "") + word
                lp = [{"token": piece, "logprob": -0.5}] if msg.params.logprobs is not None else None
                last = i == len(words) - 1
                chunk = GenChunkMsg(
                    msg.request_id, seq, index, piece, 1, finish if last else None, logprobs=lp
                )
                self._send(msg, chunk)
                seq, generated = seq + 1, generated + 1
        usage = GenUsage(prompt_tokens, generated)
        self._meter(msg, usage)
        self._send(msg, GenChunkMsg(msg.request_id, seq, msg.params.n - 1, done=True, usage=usage))

    @staticmethod
    def _words(msg: GenRequestMsg, text: str) -> tuple[list[str], str]:
        words = ["tick"] * 2000 if "SLOW" in text else REPLY.split()
        cap = msg.params.max_tokens
        if cap is not None and cap < len(words):
            return words[:cap], "length"
        return words, "stop"

    def _meter(self, msg: GenRequestMsg, usage: GenUsage) -> None:
        charge = TokenCharge(
            msg.tenant_id, msg.key_id, self.model, 1, usage.prompt_tokens, usage.completion_tokens
        )
        pipe = self.redis.pipeline(transaction=False)
        record_tokens(pipe, self.prefix, [charge])
        pipe.execute()
