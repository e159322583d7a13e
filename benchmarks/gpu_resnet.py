"""ResNet-50 TorchScript (random weights) served fp16 against its bare forward, in one run.

The model is torchvision's resnet50 (weights=None) where torchvision is installed (the GPU image has
it), else a small hand-written ResNet-like net (named in the result). It is traced, saved as a
TorchScript archive and uploaded with an FP16 signature; requests carry their images as OIP binary
tensor data (16 images each by default) and ask for the output in binary. Figures: the bare
forward's images/s at the serving batch size, and the stack's images/s under a closed loop of
clients, with their ratio.

    python benchmarks/gpu_resnet.py --device cuda --out resnet.json
    python benchmarks/gpu_resnet.py --dry-run --out resnet.json      # tiny, CPU, fp32
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))
import gpu_common as gc  # noqa: E402


class Block(torch.nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(c_out)
        self.conv2 = torch.nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(c_out)
        self.short = torch.nn.Sequential(
            torch.nn.Conv2d(c_in, c_out, 1, stride, bias=False), torch.nn.BatchNorm2d(c_out)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.short(x))


class SmallResNet(torch.nn.Module):
    """ResNet-shaped (stem, residual stages, pooling, linear head); used where torchvision is absent."""

    def __init__(self, width: int, classes: int) -> None:
        super().__init__()
        self.stem = torch.nn.Sequential(
            torch.nn.Conv2d(3, width, 3, 1, 1, bias=False), torch.nn.BatchNorm2d(width)
        )
        self.stages = torch.nn.Sequential(
            Block(width, width, 1), Block(width, 2 * width, 2), Block(2 * width, 4 * width, 2)
        )
        self.fc = torch.nn.Linear(4 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stages(torch.relu(self.stem(x)))
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(y, 1), 1))


def build(args: argparse.Namespace) -> tuple[torch.nn.Module, str]:
    torch.manual_seed(0)
    if not args.dry_run:
        try:
            import torchvision

            return torchvision.models.resnet50(weights=None).eval(), "torchvision resnet50, random weights"
        except ImportError:
            pass
    return SmallResNet(
        8 if args.dry_run else 64, args.classes
    ).eval(), "hand-written ResNet-like net, random weights"


def script(model: torch.nn.Module, args: argparse.Namespace, dtype: torch.dtype) -> bytes:
    """Traced on the device in `dtype` (fp16 convolutions need not exist on the CPU), saved."""
    m = model.to(args.device, dtype)
    x = torch.randn(2, 3, args.size, args.size, device=args.device, dtype=dtype)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(m, x)
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    return buf.getvalue()


def bare(data: bytes, args: argparse.Namespace, dtype: torch.dtype) -> float:
    if args.device == "cpu":
        torch.set_num_threads(1)  # as the serving worker (threads=1)
    m = torch.jit.load(io.BytesIO(data), map_location=args.device).eval()
    x = torch.randn(args.batch, 3, args.size, args.size, device=args.device, dtype=dtype)

    def call() -> object:
        with torch.inference_mode():
            return m(x)

    return gc.throughput(call, args.batch, args.device, args.seconds)


def request(args: argparse.Namespace, np_dtype: Any, datatype: str) -> tuple[bytes, dict[str, str]]:
    """An OIP request of `per_request` images as binary tensor data, output asked for in binary."""
    images = np.random.default_rng(0).standard_normal((args.per_request, 3, args.size, args.size))
    raw = images.astype(np_dtype).astype(np_dtype.newbyteorder("<")).tobytes()
    shape = [args.per_request, 3, args.size, args.size]
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": shape,
                    "datatype": datatype,
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        }
    ).encode()
    headers = {
        "Authorization": f"Bearer {gc.KEY}",
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }
    return header + raw, headers


def served(data: bytes, args: argparse.Namespace, datatype: str, np_dtype: Any, work: Path) -> dict[str, Any]:
    kiln = gc.Kiln(work, args.gateways, 1, 1)
    try:
        sig = {
            "inputs": [{"name": "x", "datatype": datatype, "shape": [-1, 3, args.size, args.size]}],
            "outputs": [{"name": "y", "datatype": datatype, "shape": [-1, args.classes]}],
        }
        config = {"max_batch_size": args.batch, "max_queue_delay_ms": args.delay_ms, "device": args.device}
        gc.register(kiln, "resnet", "resnet.pt", data, "torchscript", signature=sig, config=config)
        url = f"{kiln.url}/v2/models/resnet/infer"
        content, headers = request(args, np_dtype, datatype)
        gc.wait_served(url, content, headers)
        gc.closed_loop(url, content, headers, args.clients, 1.0)  # warm up
        return gc.closed_loop(url, content, headers, args.clients, args.duration)
    finally:
        kiln.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--dry-run", action="store_true", help="tiny net, 32x32 images, CPU, fp32")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--batch", type=int, default=64, help="bare batch and the version's max_batch_size")
    p.add_argument("--per-request", type=int, default=16, help="images per request")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--gateways", type=int, default=4)
    p.add_argument("--seconds", type=float, default=3.0, help="the bare timing")
    p.add_argument("--duration", type=float, default=10.0, help="the served run")
    p.add_argument("--delay-ms", type=float, default=2.0)
    p.add_argument("--dtype", default="auto", choices=["auto", "fp16", "fp32"], help="auto: fp16 on CUDA")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    if args.dry_run:
        args.device, args.size, args.classes, args.batch, args.per_request = "cpu", 32, 10, 8, 2
        args.clients, args.gateways, args.seconds, args.duration = 2, 1, 0.3, 1.0
    fp16 = args.dtype == "fp16" or (args.dtype == "auto" and args.device == "cuda")
    dtype, np_dtype, datatype = (
        (torch.float16, np.dtype(np.float16), "FP16")
        if fp16
        else (torch.float32, np.dtype(np.float32), "FP32")
    )
    model, name = build(args)
    data = script(model, args, dtype)
    del model
    base = bare(data, args, dtype)
    if args.device == "cuda":
        torch.cuda.empty_cache()
    with tempfile.TemporaryDirectory(prefix="kiln-resnet-") as tmp:
        s = served(data, args, datatype, np_dtype, Path(tmp))
    images_s = s["requests_s"] * args.per_request
    result = {
        "benchmark": "resnet",
        "dry_run": args.dry_run,
        "model": name,
        "dtype": datatype,
        "image_size": args.size,
        **gc.device_info(args.device),
        "figures": [
            gc.figure(f"bare forward batch {args.batch} ({datatype})", base, "images/s"),
            gc.figure(
                f"served, {args.per_request} images per request, {args.clients} clients ({datatype})",
                images_s,
                "images/s",
                base,
                detail=s,
            ),
        ],
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result["figures"], indent=1))


if __name__ == "__main__":
    main()
