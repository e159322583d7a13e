"""The inside of a fenced generation model (runs in a `model_store.fence.FencedChild`).

`serve(channel, args)` checks the artifact's sha256, loads the model and its tokenizer
(loading.py), starts the engine (engine.py) and says whether that worked in its first frame.
Then one thread does everything, so the engine keeps its one-thread model: it takes commands
from the worker (`submit`, `cancel`, `close`) and pumps the engine's events back as they come,
unasked. Frames (JSON headers, model_store.channel):

    worker -> child  {"op": "submit"} + the request's JSON header (GenRequestMsg) as a buffer
                     (+ its LoRA adapter bundle's bytes as a second buffer, when the child
                     does not hold that adapter: the child never reads the blob store)
                     {"op": "cancel", "id": ...}   {"op": "close"}
    child -> worker  {"submitted": id} or {"submitted": id, "error": ..., "code": ...}
                     or {"submitted": id, "need_adapter": true} (send it again with the bytes)
                     {"events": [...], "stats": {...}}   (wire.py)

While requests run the child polls the engine in short slices and the channel between them;
idle, it waits on the channel alone.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from model_store.channel import Channel
from workers.contract.generation import KIND, GenRequestMsg
from workers.contract.messages import CONTRACT_VERSION, ContractError
from workers.generation.backend import GenInputError, NeedAdapter
from workers.generation.wire import event_to_json, stats_to_json

CONVERTED = "converted.tar"  # in the child's directory: a GGUF model as a bundle, for the cache
SLICE_S = 0.005  # engine poll while requests run
IDLE_S = 0.5  # channel wait while none do


def _tie_lifetime() -> None:
    """The worker decides when this process ends: SIGTERM/SIGINT sent to the worker's process
    group are ignored, and the process dies with the fork server (so with the worker)."""
    import ctypes
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:
        raise SystemExit(0)


def _load(args: dict[str, Any]) -> Any:
    import torch

    from workers.common.causal_model import export_bundle, load_model
    from workers.generation.engine import Engine

    if args.get("threads"):
        torch.set_num_threads(int(args["threads"]))
    path = _linked(Path(args["path"]))
    loaded = load_model(path, str(args["sha256"]), str(args["device"]), args["limits"])
    if args.get("convert"):
        export_bundle(loaded, path.parent.parent / CONVERTED)
    return Engine(loaded, args["options"], args["limits"])


def _linked(blob: Path) -> Path:
    """The blob as a file in this child's own directory (a link: nothing is copied), so that
    transformers, which reads a GGUF file as `folder/name`, lists a folder the fence lets it
    read instead of the blob store's."""
    folder = Path(os.environ.get("TMPDIR", "/tmp")) / "model"  # noqa: S108 (the fence sets TMPDIR)
    folder.mkdir(exist_ok=True)
    link = folder / "model.gguf"
    with contextlib.suppress(FileNotFoundError):
        link.unlink()
    link.symlink_to(blob)
    return link


def serve(ch: Channel, args: dict[str, Any]) -> None:
    """Load, say so, then run commands and pump events until the worker closes the pipe."""
    from workers.contract.errors import LoadError

    _tie_lifetime()
    try:
        engine = _load(args)
    except LoadError as exc:
        ch.send({"error": str(exc)[:300]})
        return
    except Exception as exc:
        ch.send({"error": f"could not load the model: {type(exc).__name__}: {str(exc)[:200]}"})
        return
    header = {"loaded": True, "device": engine.device, "context_length": engine.context_length}
    ch.send({**header, "converted": CONVERTED} if args.get("convert") else header)
    try:
        _run(ch, engine)
    finally:
        engine.close()


def _run(ch: Channel, engine: Any) -> None:
    last_stats: dict[str, Any] = {}
    while True:
        busy = engine.busy
        if ch.poll(0 if busy else IDLE_S):
            header, bufs = ch.recv()
            if not _command(ch, engine, header, bufs):
                return
        events = engine.poll(SLICE_S if busy else 0.0)
        stats = stats_to_json(engine.stats())
        if events or stats != last_stats:
            ch.send({"events": [event_to_json(e) for e in events], "stats": stats})
            last_stats = stats
        if engine.broken:  # its requests have their error events; the worker sees this process end
            return


def _command(ch: Channel, engine: Any, header: dict[str, Any], bufs: list[memoryview]) -> bool:
    op = header.get("op")
    if op == "close":
        return False
    if op == "cancel":
        engine.cancel(str(header.get("id", "")))
    elif op == "submit":
        fields = {b"v": CONTRACT_VERSION, b"k": KIND, b"h": bytes(bufs[0]) if bufs else b"{}"}
        try:
            req = GenRequestMsg.from_fields(fields)
        except ContractError as exc:
            ch.send(
                {"submitted": str(header.get("id", "")), "error": str(exc)[:1000], "code": "invalid_input"}
            )
            return True
        data = bytes(bufs[1]) if len(bufs) > 1 else None
        try:
            engine.submit(req, (lambda _ref: data) if data is not None else None)
        except NeedAdapter:
            ch.send({"submitted": req.request_id, "need_adapter": True})
            return True
        except GenInputError as exc:
            ch.send({"submitted": req.request_id, "error": str(exc)[:1000], "code": exc.code})
            return True
        ch.send({"submitted": req.request_id})
    return True
