"""Generation benchmark (issue 12): modelkiln against (a) transformers' continuous batching
in-process with no server (the ceiling) and (b) LitServe with its OpenAISpec, same model, same
prompts, greedy, same run. Prints tokens/s and time to first token (p50, p99) per concurrency
and the ratios; writes JSON with --out.

    python benchmarks/gen_bench.py                         # SmolLM2-135M (GGUF), CPU, 1/8/32 streams
    python benchmarks/gen_bench.py --model llama1b --device cuda --streams 64 --no-litserve
    python benchmarks/gen_bench.py --dry-run               # a tiny random Llama, a few tokens
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from gen_models import TOPICS, build_model, load_local  # noqa: E402
from gpu_common import register  # noqa: E402
from serve_bench import KEY, Kiln, free_port, wait_http  # noqa: E402


def prompts(n: int) -> list[list[dict[str, str]]]:
    return [
        [{"role": "user", "content": f"Write a long story about {TOPICS[i % len(TOPICS)]} (number {i})."}]
        for i in range(n)
    ]


T0 = time.perf_counter()


def say(text: str) -> None:
    """Progress, so that a run cut off by its budget shows how far it came."""
    print(f"[{time.perf_counter() - T0:6.1f} s] {text}", flush=True)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q))] if s else float("nan")


def inprocess(args: argparse.Namespace, src: dict[str, Any]) -> dict[str, Any]:
    """The ceiling: generate_batch (continuous batching, paged cache) with no server; and the
    bare prefill of one prompt (time to first token's floor)."""
    from transformers import GenerationConfig

    lm, tok = load_local(src, args.device, args.dtype)
    gen = GenerationConfig(
        max_new_tokens=args.max_tokens,
        do_sample=False,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.eos_token_id,
    )
    out: dict[str, Any] = {"streams": {}}
    ids_of = [tok.apply_chat_template(m, add_generation_prompt=True, tokenize=True) for m in prompts(64)]
    ids_of = [x if isinstance(x, list) else list(x["input_ids"]) for x in ids_of]
    from workers.generation.engine import EngineOptions

    # the same paged-cache and batch sizes the worker's engine uses: the same scheduler, no server
    cb = EngineOptions().cb_config(args.device)
    manager = lm.init_continuous_batching(generation_config=gen, continuous_batching_config=cb)
    manager.start()  # one manager for every wave, as a server keeps it: steady state, not start-up
    try:
        wave(manager, ids_of[:2])  # warm up
        for n in args.streams:
            wave(manager, [ids_of[i % len(ids_of)] for i in range(n)])  # warm up at this size
            start = time.perf_counter()
            tokens = wave(manager, [ids_of[i % len(ids_of)] for i in range(n)])
            wall = time.perf_counter() - start
            out["streams"][n] = {"tokens_s": tokens / wall, "tokens": tokens, "seconds": wall}
            say(f"in-process CB, {n} streams: {tokens / wall:.1f} tok/s")
    finally:
        manager.stop(block=True)
    one = torch.tensor([ids_of[0]], device=args.device)
    times = []
    with torch.inference_mode():
        for i in range(12):
            t = time.perf_counter()
            lm(one).logits[:, -1].argmax(-1).item()
            if i >= 2:
                times.append(time.perf_counter() - t)
    out["prefill_p50_ms"] = statistics.median(times) * 1000
    del lm
    return out


def wave(manager: Any, inputs: list[list[int]]) -> int:
    """Add these prompts together; the generated tokens once all have finished."""
    ids = {manager.add_request(x) for x in inputs}
    tokens = 0
    while ids:
        res = manager.get_result(timeout=1)
        if res is not None and res.is_finished() and res.request_id in ids:
            ids.discard(res.request_id)
            tokens += len(res.generated_tokens)
    return tokens


async def one_stream(c: httpx.AsyncClient, url: str, body: dict[str, Any]) -> tuple[float, int, float]:
    """(time to first content, completion tokens, end) of one streamed chat completion."""
    start = time.perf_counter()
    first, chunks, tokens = 0.0, 0, None
    async with c.stream("POST", url, json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{url}: {r.status_code} {(await r.aread())[:300]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(f"error event: {chunk['error']}")
            if (chunk.get("usage") or {}).get("completion_tokens"):  # LitServe sends zeros
                tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    chunks += 1
                    first = first or time.perf_counter() - start
    return first, chunks if tokens is None else tokens, time.perf_counter()


async def streams(url: str, headers: dict[str, str], model: str, n: int, max_tokens: int) -> dict[str, Any]:
    bodies = [
        {
            "model": model,
            "messages": m,
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        for m in prompts(n)
    ]
    limits = httpx.Limits(max_connections=n + 4)
    async with httpx.AsyncClient(headers=headers, timeout=900, limits=limits) as c:
        # warm up (the first call loads the model) with up to 8 at once: a server without batching
        # (LitServe's generate per request) would spend minutes on a warm-up wave of 32
        await asyncio.gather(*(one_stream(c, url, b) for b in bodies[:8]))
        start = time.perf_counter()
        got = await asyncio.gather(*(one_stream(c, url, b) for b in bodies))
        wall = max(end for _f, _t, end in got) - start
        ttft = [f * 1000 for f, _t, _e in got]
        if n == 1:  # a few more alone: time to first token with nothing else running
            for _ in range(4):
                ttft.append((await one_stream(c, url, bodies[0]))[0] * 1000)
    tokens = sum(t for _f, t, _e in got)
    return {
        "tokens_s": tokens / wall,
        "tokens": tokens,
        "seconds": wall,
        "ttft_p50_ms": pct(ttft, 0.5),
        "ttft_p99_ms": pct(ttft, 0.99),
    }


def run_kiln(args: argparse.Namespace, work: Path, src: dict[str, Any]) -> dict[int, Any]:
    # a ~1B bf16 bundle is over the default upload (2 GiB), parameter (1e9) and check limits
    for name, value in {
        "KILN_MAX_UPLOAD_BYTES": str(8 << 30),
        "KILN_MAX_MODEL_PARAMETERS": str(3_000_000_000),
        "KILN_CHECK_MEMORY_MB": str(32 << 10),
        "KILN_CHECK_TIMEOUT_S": "600",
        "KILN_MODEL_MEMORY_MB": str(32 << 10),
        # base-model throughput against in-process CB with the same manager settings: LoRA
        # adapters (on by default) turn off prefix-block sharing, async batching and CUDA graphs;
        # KILN_GEN_MAX_ADAPTERS=8 in the environment measures the platform with them on
        "KILN_GEN_MAX_ADAPTERS": "0",
    }.items():
        os.environ.setdefault(name, value)
    kiln = Kiln(work / "kiln", 1, 1, args.threads)
    try:
        say("modelkiln up; registering the model")
        register(
            kiln,
            "chat",
            src["upload_name"],
            src["upload"].read_bytes(),
            "hf-causal-lm",
            config={"device": args.device},
        )
        headers = {"Authorization": f"Bearer {KEY}"}
        url = f"{kiln.url}/v1/chat/completions"
        say("registered")
        out = {}
        for n in args.streams:
            out[n] = asyncio.run(streams(url, headers, "chat", n, args.max_tokens))
            r = out[n]
            say(f"modelkiln, {n} streams: {r['tokens_s']:.1f} tok/s, TTFT p50 {r['ttft_p50_ms']:.0f} ms")
        return out
    finally:
        kiln.stop()


def run_litserve(args: argparse.Namespace, src: dict[str, Any]) -> dict[int, Any]:
    port = free_port()
    argv = [
        sys.executable,
        str(ROOT / "benchmarks" / "litserve_llm_server.py"),
        "--model",
        str(src["local"]),
        "--port",
        str(port),
        "--workers",
        str(args.litserve_workers),
        "--threads",
        str(args.threads),
        "--device",
        args.device,
        "--dtype",
        args.dtype,
    ]
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc, timeout=300)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        return {n: asyncio.run(streams(url, {}, "chat", n, args.max_tokens)) for n in args.streams}
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)


def report(args: argparse.Namespace, base: dict[str, Any], kiln: dict[int, Any], lit: dict[int, Any]) -> str:
    lines = [
        f"model {args.model}, device {args.device}, {args.dtype}, greedy, max_tokens {args.max_tokens}",
        f"bare prefill of one prompt p50: {base['prefill_p50_ms']:.1f} ms",
    ]
    for n in args.streams:
        b, k, ls = base["streams"][n]["tokens_s"], kiln.get(n), lit.get(n)
        line = f"{n:>3} streams: in-process CB {b:8.1f} tok/s"
        if k:
            line += (
                f" | modelkiln {k['tokens_s']:8.1f} tok/s ({k['tokens_s'] / b:.2f}x of CB), "
                f"TTFT p50 {k['ttft_p50_ms']:.0f} ms p99 {k['ttft_p99_ms']:.0f} ms"
            )
        if ls:
            line += f" | LitServe {ls['tokens_s']:8.1f} tok/s, TTFT p50 {ls['ttft_p50_ms']:.0f} ms"
            if k:
                line += f" (modelkiln {k['tokens_s'] / ls['tokens_s']:.2f}x LitServe)"
        lines.append(line)
    return "\n".join(lines)


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2", choices=["smollm2", "llama1b", "tiny"])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default=None, help="float32 on CPU, bfloat16 on CUDA by default")
    p.add_argument("--streams", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--litserve-workers", type=int, default=1)
    p.add_argument("--no-litserve", action="store_true")
    p.add_argument("--no-kiln", action="store_true")
    p.add_argument("--dry-run", action="store_true", help="tiny random Llama, 16 tokens, 1 and 4 streams")
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    if a.dry_run:
        a.model, a.max_tokens, a.streams = "tiny", 16, [1, 4]
    a.dtype = a.dtype or ("bfloat16" if a.device == "cuda" else "float32")
    return a


def main() -> None:
    args = parse()
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="kiln-gen-bench-"))
    src = build_model(args.model, work, args.dtype)
    say(f"model {args.model} built")
    base = inprocess(args, src)
    gc.collect()  # the baseline's model and paged cache go before the server's worker loads its own
    if args.device == "cuda":
        torch.cuda.empty_cache()
    kiln = {} if args.no_kiln else run_kiln(args, work, src)
    lit = {} if args.no_litserve else run_litserve(args, src)
    text = report(args, base, kiln, lit)
    print(text)
    if args.out:
        result = {
            "args": {k: str(v) for k, v in vars(args).items()},
            "in_process": base,
            "modelkiln": kiln,
            "litserve": lit,
            "report": text,
            "torch": torch.__version__,
        }
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
