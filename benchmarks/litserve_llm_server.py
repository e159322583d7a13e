"""LitServe with its OpenAISpec serving a causal LM (a GGUF file or a bundle directory) for the
generation benchmark (benchmarks/gen_bench.py): `/v1/chat/completions`, streamed, greedy.

LitServe's documented way to serve an LLM with OpenAISpec: predict yields text as transformers'
TextIteratorStreamer produces it, one generate() per request; `--workers` processes per device
are its way to serve several streams at once (it has no continuous batching)."""

from __future__ import annotations

import argparse
import threading
from collections.abc import Iterator
from pathlib import Path

import litserve as ls
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer


def load(model: str, device: str, dtype: torch.dtype) -> tuple[object, object]:
    path = Path(model)
    kw = {"gguf_file": path.name} if path.is_file() else {}
    where = str(path.parent if path.is_file() else path)
    tok = AutoTokenizer.from_pretrained(where, **kw)
    lm = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **kw).to(device).eval()
    return lm, tok


class ChatAPI(ls.LitAPI):
    def __init__(self, model: str, threads: int, dtype: str) -> None:
        super().__init__()
        self.model_path, self.threads, self.dtype = model, threads, getattr(torch, dtype)

    def setup(self, device: str) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)
        self.device = device
        self.lm, self.tok = load(self.model_path, device, self.dtype)

    def decode_request(self, request):  # type: ignore[no-untyped-def]
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        return messages, request.max_tokens or 128

    def predict(self, x) -> Iterator[str]:  # type: ignore[no-untyped-def]
        messages, max_tokens = x
        ids = self.tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
        ids = ids if torch.is_tensor(ids) else ids["input_ids"]
        streamer = TextIteratorStreamer(self.tok, skip_prompt=True, skip_special_tokens=True)
        kwargs = {"input_ids": ids.to(self.device), "max_new_tokens": max_tokens, "do_sample": False}
        thread = threading.Thread(target=self.lm.generate, kwargs={**kwargs, "streamer": streamer})
        thread.start()
        yield from streamer
        thread.join()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--workers", type=int, default=1, help="processes per device")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    a = p.parse_args()
    api = ChatAPI(a.model, a.threads, a.dtype)
    server = ls.LitServer(
        api, spec=ls.OpenAISpec(), accelerator=a.device, workers_per_device=a.workers, timeout=600
    )
    server.run(port=a.port, generate_client_file=False)


if __name__ == "__main__":
    main()
