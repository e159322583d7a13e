"""Targets run inside a fenced child by the fence tests (imported by name in the child)."""
# ruff: noqa: SIM115

from __future__ import annotations

import getpass
import os
import socket
from typing import Any

from model_store.channel import Channel


def _unix_connect(path: str) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(path)


def _cuda_work() -> str:
    """Kernels, cuBLAS (loaded lazily, after the fence closed) and a new 1 GiB allocation."""
    import torch

    a = torch.randn(2048, 2048, device="cuda", dtype=torch.float16)
    b = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    torch.cuda.synchronize()
    return f"ok {float((a @ a).float().abs().sum()) > 0} {b.numel()}"


def probe(ch: Channel, args: dict[str, Any]) -> None:
    """Try every way out the fence must close, report each outcome, then echo requests."""
    out: dict[str, str] = {}
    for key, attempt in (
        ("read_secret", lambda: open(args["secret"], "rb").read()),
        ("read_artifact", lambda: open(args["artifact"], "rb").read()),
        ("write_outside", lambda: open(args["outside"], "wb").write(b"x")),
        ("tcp", lambda: socket.create_connection(("127.0.0.1", args["port"]), timeout=1)),
        ("signal_parent", lambda: os.kill(args["parent"], 0)),
        ("parent_environ", lambda: open(f"/proc/{args['parent']}/environ", "rb").read()),
        ("env_secret", lambda: os.environ["KILN_FENCE_TEST_SECRET"]),
        ("unix_socket", lambda: _unix_connect(args["unix"])),
        ("udp", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()),
        ("tcp6", lambda: socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()),
        ("internet", lambda: socket.create_connection(("192.0.2.1", 80), timeout=1)),
        ("loopback_listen", lambda: socket.create_server(("127.0.0.1", 0)).close()),
        ("netlink_route", lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0).close()),
        ("netlink_audit", lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 9).close()),
    ):
        try:
            attempt()
            out[key] = "allowed"
        except (OSError, KeyError) as exc:
            out[key] = type(exc).__name__
    out["user"] = getpass.getuser()  # torch's compile caches ask; the password file is fenced off
    if args.get("cuda"):
        out["cuda"] = _cuda_work()
    ch.send(out)
    while True:
        header, buffers = ch.recv()
        if header.get("op") == "hang":
            while True:
                pass
        if header.get("op") == "allocate":
            buffers = [bytes(header["n"])]
        ch.send({"echo": header}, buffers)


def run_torchscript_file(ch: Channel, args: dict[str, Any]) -> None:
    """Load and call a TorchScript file once (as the check and the worker do), report the result."""
    import torch

    module = torch.jit.load(args["path"])
    try:
        out = module(torch.zeros(1, 4))
        ch.send({"result": out.tolist()})
    except Exception as exc:
        ch.send({"error": str(exc)[-300:]})


def _without_static_checks() -> None:
    """In this process only: the load-time static checks become no-ops, so what the fence alone
    does can be seen (the tests plant models the checks would refuse)."""
    from workers.inference import runners

    for name in ("check_onnx_bytes", "check_torchscript_archive", "check_torchscript_module"):
        setattr(runners, name, lambda *_: None)


def serve_unchecked(ch: Channel, args: dict[str, Any]) -> None:
    """The worker's model process (workers.model_host.serve), minus the static checks."""
    from workers.inference import model_host

    _without_static_checks()
    model_host.serve(ch, args)


def _trainer_without_static_checks() -> None:
    """The fine-tune child's load-time static checks become no-ops (this process only)."""
    from workers.finetune import model as ft_model

    for name in ("check_torchscript_archive", "check_torchscript_module"):
        setattr(ft_model, name, lambda *_: None)


def train_unchecked(ch: Channel, args: dict[str, Any]) -> None:
    """The trainer's fenced child (workers.ft_child.train_main), minus the static checks."""
    from workers.finetune import child as ft_child

    _trainer_without_static_checks()
    ft_child.train_main(ch, args)


def evaluate_unchecked(ch: Channel, args: dict[str, Any]) -> None:
    from workers.finetune import child as ft_child

    _trainer_without_static_checks()
    ft_child.evaluate_main(ch, args)


def train_rank1_exits(ch: Channel, args: dict[str, Any]) -> None:
    """A distributed job's rank 1 ends at once with exit code 3 (no signal); the others train."""
    if (args.get("dist") or {}).get("rank") == 1:
        os._exit(3)
    from workers.finetune import child as ft_child

    ft_child.train_main(ch, args)


def check_counting_conversions(ch: Channel, args: dict[str, Any]) -> None:
    """The gateway's model check (workers.finetune.child.check_main), its answer's counts adding
    how many times a GGUF file was dequantised in this child ("gguf_conversions")."""
    from workers.common import causal_model
    from workers.finetune import child as ft_child

    real, calls = causal_model._from_gguf, [0]

    def counted(*a: Any, **kw: Any) -> Any:
        calls[0] += 1
        return real(*a, **kw)

    causal_model._from_gguf = counted  # type: ignore[assignment]
    send = ch.send

    def send_counted(header: dict[str, Any], buffers: Any = ()) -> None:
        if header.get("type") == "checked" and header.get("ok"):
            header = {**header, "counts": {**header["counts"], "gguf_conversions": calls[0]}}
        send(header, buffers)

    ch.send = send_counted  # type: ignore[method-assign]
    ft_child.check_main(ch, args)
