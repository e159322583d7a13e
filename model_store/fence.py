"""The fence around code we did not write: a child process that can read its own artifact and the
Python installation, and nothing else.

Every place that loads, checks or runs a tenant's model (the upload check, the worker's model
instances, the trainer's job) does it in a `FencedChild`:

- a fresh process forked from a single-threaded fork server (multiprocessing's `forkserver`,
  with the runtimes preloaded, so a child starts in milliseconds instead of a second);
- Landlock applied before the child runs anything: read and execute beneath the interpreter,
  its packages and the system libraries; read beneath the paths named for this child (its
  artifact); read and write beneath its own empty temporary directory; no TCP, no abstract
  Unix sockets, no signals to processes outside the fence (model_store.landlock);
- resource limits: address space (where no GPU is used), CPU seconds, file size, no core dumps;
- an environment reduced to a few harmless variables (secrets never reach the child);
- one pipe to the parent, carrying length-bounded frames of a JSON header and raw buffers. The
  parent never unpickles anything the child sends.

A child that does not answer within its deadline is killed (`FenceTimeout`); one that dies
(`FenceDied`) says how if it can (the memory limit shows as MemoryError).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import importlib.util
import logging
import multiprocessing
import os
import resource
import shutil
import signal
import sys
import tempfile
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from model_store import landlock, netns
from model_store.channel import Channel, FenceError

log = logging.getLogger("kiln.fence")

_ENV_KEEP = (
    "PATH",
    "LANG",
    "LC_ALL",
    "TZ",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_VISIBLE_DEVICES",
    "CUDA_DEVICE_ORDER",
    "PYTORCH_CUDA_ALLOC_CONF",
    "PYTHONHASHSEED",
)
_SYSTEM_READ = (
    "/usr/lib",
    "/usr/lib64",
    "/lib",
    "/lib64",
    "/usr/local/lib",
    "/usr/share/zoneinfo",
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/dev/urandom",
    "/dev/null",
    "/proc/cpuinfo",
    "/sys/devices/system/cpu",
    "/sys/fs/cgroup/cpu.max",
)
_GPU_PATHS = (
    "/dev/nvidiactl",
    "/dev/nvidia-uvm",
    "/dev/nvidia-uvm-tools",
    *(f"/dev/nvidia{i}" for i in range(8)),
    "/proc/driver/nvidia",
    "/sys/devices",
    "/sys/bus/pci",
    "/dev/shm",  # noqa: S108 (CUDA IPC, only with gpu)
)
_RANK_READ = ("/sys/bus/pci", "/sys/devices")  # a DDP rank (netns): gloo scans the PCI devices
_PRELOAD = ["numpy", "onnx", "onnxruntime", "torch", "model_store.formats"]  # and what preload() adds


class FenceTimeout(FenceError):
    """The child did not answer within its deadline and was killed."""


class FenceDied(FenceError):
    """The child exited (killed, crashed, or over its memory limit)."""


class FenceUnavailable(FenceError):
    """The operating system cannot fence a child here and the settings require a fence."""


@dataclass(frozen=True)
class FenceSpec:
    """What one child may touch: `read` extra paths (the artifact), `write` extra writable dirs (a
    DDP group's rendezvous); `memory_bytes`, `cpu_s` limits (0: none); `gpu` opens the NVIDIA
    device files; `netns` a PrivateNetwork's pid: joined, then IPv4 TCP is open (model_store/netns.py)."""

    read: tuple[str, ...] = ()
    memory_bytes: int = 0
    cpu_s: int = 0
    file_bytes: int = 256 << 20
    gpu: bool = False
    require: bool = True
    env: dict[str, str] = field(default_factory=dict)
    write: tuple[str, ...] = ()
    netns: int = 0


def fence_available() -> bool:
    return landlock.abi_version() >= 1


def _python_paths() -> list[Path]:
    """The interpreter, its standard library and installed packages, and the project's own
    package directories (never the project root: a data directory may live there)."""
    paths = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix), Path(sys.executable).parent}
    for name in ("model_store", "workers", "service", "migrations"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            paths.update(Path(p) for p in spec.submodule_search_locations)
    for entry in sys.path:
        p = Path(entry)
        if (p.is_dir() and p.name in ("site-packages", "dist-packages")) or p.name.startswith("python3"):
            paths.add(p)
    return sorted(paths)


def _package_dirs(target: str) -> list[str]:
    """The directories of the target's top-level package (our code, chosen by us)."""
    spec = importlib.util.find_spec(target.partition(":")[0].split(".")[0])
    if spec is None or not spec.submodule_search_locations:
        return []
    return list(spec.submodule_search_locations)


def _mapped_bytes() -> int:
    """The address space this child already has: the preloaded interpreter, torch with its CUDA
    libraries (3.7 GiB mapped, 0.5 GiB resident, measured on the H100 machine). A memory limit is
    counted on top, so it means the same with a CPU or a CUDA build of torch."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return 0


def cuda_available() -> bool:
    """Whether torch sees a GPU here: the one place that asks (workers.common.device too)."""
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def _open_cuda(visible: str | None) -> None:
    """Create this child's CUDA context (on the GPUs `visible` names, a DDP rank's) before the
    fence closes. Measured on an H100 (driver 580, CUDA 13): the driver's first call fails with
    error 304 under the seccomp filter alone (it creates a socket) and under Landlock alone, while
    a context made first keeps working behind both: kernels, cuBLAS loaded lazily, allocations."""
    if visible is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible
    import torch

    if not torch.cuda.is_available():
        raise FenceError("this child asks for CUDA and no GPU is present")
    torch.zeros(1, device="cuda").sum().item()


def _apply(spec: FenceSpec, tmp: Path) -> None:
    """Runs first in the child, while it is single-threaded (a gpu child opens CUDA first, and
    the driver's threads start then; none runs code of ours)."""
    if spec.netns:  # first: joining a user namespace needs a single-threaded process
        netns.join(spec.netns)
    if spec.gpu:
        _open_cuda(spec.env.get("CUDA_VISIBLE_DEVICES"))
    keep = {k: os.environ[k] for k in _ENV_KEEP if k in os.environ}
    os.environ.clear()
    # USER and LOGNAME answer getpass.getuser() (torch's compile caches ask it) without the
    # password file, which the child cannot read
    user = {"USER": "kiln-model", "LOGNAME": "kiln-model"}
    os.environ.update(keep | spec.env | user | {"TMPDIR": str(tmp), "HOME": str(tmp)})
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if spec.file_bytes:
        resource.setrlimit(resource.RLIMIT_FSIZE, (spec.file_bytes, spec.file_bytes))
    if spec.memory_bytes and not spec.gpu:
        limit = _mapped_bytes() + spec.memory_bytes
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if spec.cpu_s:
        resource.setrlimit(resource.RLIMIT_CPU, (spec.cpu_s, spec.cpu_s + 1))
    read = [*_python_paths(), *(Path(p) for p in _SYSTEM_READ), *(Path(p) for p in spec.read)]
    read += [Path(p) for p in _RANK_READ] if spec.netns else []
    write = [tmp, Path("/dev/null"), *(Path(p) for p in spec.write)]
    if spec.gpu:
        write += [Path(p) for p in _GPU_PATHS]
    try:
        landlock.restrict(read, write, tcp=bool(spec.netns))
        landlock.deny_new_sockets(inet_stream=bool(spec.netns))
    except landlock.LandlockUnavailable:
        if spec.require:
            raise
        log.warning("model code runs without a filesystem fence: Landlock is not available here")


def _child_main(conn: Connection, target: str, args: dict[str, Any], spec: FenceSpec, tmp: str) -> None:
    try:
        _apply(spec, Path(tmp))
        module, _, func = target.partition(":")
        fn: Callable[[Channel, dict[str, Any]], None] = getattr(importlib.import_module(module), func)
    except BaseException as exc:
        Channel(conn).send({"fence_error": f"{type(exc).__name__}: {exc}"[:300]})
        raise SystemExit(3) from None
    channel = Channel(conn)
    channel.send({"ready": True})
    try:
        fn(channel, args)
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        pass
    except MemoryError:
        _last_word(conn, "MemoryError: over the memory limit")
    except BaseException as exc:
        _last_word(conn, f"{type(exc).__name__}: {str(exc)[:300]}")


def _last_word(conn: Connection, text: str) -> None:
    with contextlib.suppress(OSError):
        Channel(conn).send({"died": text})


_ctx_lock = threading.Lock()
_ctx: Any = None


def preload(*modules: str) -> None:
    """Modules the fork server imports once for all its children (before its first start; a
    worker adds its model host, a trainer its training child)."""
    with _ctx_lock:
        if _ctx is not None:  # started already (tests run several roles in one process): children import them
            log.debug("fork server already started; %s imported by each child instead", modules)
            return
        _PRELOAD.extend(m for m in modules if m not in _PRELOAD)


def _context() -> Any:
    global _ctx
    with _ctx_lock:
        if _ctx is None:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload([m for m in _PRELOAD if importlib.util.find_spec(m) is not None])
            _ctx = ctx
        return _ctx


_started = threading.Event()
_start_lock = threading.Lock()


def prestart() -> None:
    """Start the fork server and wait until it has imported the runtimes (seconds, once per
    process), so that no request and no deadline pays for it. Idempotent."""
    if _started.is_set():
        return
    with _start_lock:
        if not _started.is_set():
            proc = _context().Process(target=_nothing, name="kiln-fence-prestart")
            proc.start()
            proc.join()
            _started.set()


def _nothing() -> None:
    return None


_live: weakref.WeakSet[FencedChild] = weakref.WeakSet()


@atexit.register
def _kill_children() -> None:
    """At exit, before multiprocessing joins its children: a fenced child ignores SIGTERM (its
    worker decides when it ends), so multiprocessing's terminate-then-join would wait forever."""
    for child in list(_live):
        child.kill()


class FencedChild:
    """One fenced process running `target(channel, args)`; `call` is one request and its answer."""

    def __init__(
        self, target: str, args: dict[str, Any], spec: FenceSpec, start_timeout_s: float = 60
    ) -> None:
        if spec.require and not fence_available():
            raise FenceUnavailable("Landlock is not available on this kernel; model code cannot be fenced")
        prestart()  # the fork server's start is ours, not the child's: it counts in no deadline
        ctx = _context()
        spec = replace(spec, read=(*spec.read, *_package_dirs(target)))
        self._tmp = tempfile.mkdtemp(prefix="kiln-fence-")
        parent, child = ctx.Pipe(duplex=True)
        self._proc = ctx.Process(
            target=_child_main, args=(child, target, args, spec, self._tmp), daemon=True, name="kiln-fenced"
        )
        self._proc.start()
        _live.add(self)
        child.close()
        self._conn = parent
        self.channel = Channel(parent)
        self._lock = threading.Lock()
        header = self._first(start_timeout_s)
        if "fence_error" in header:
            self.kill()
            raise FenceUnavailable(f"fenced child could not start: {header['fence_error']}")

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def alive(self) -> bool:
        return self._proc.is_alive()

    def exitcode(self, wait_s: float = 0.0) -> int | None:
        """The exit code (negative: the signal that killed it); None while the child runs."""
        self._proc.join(wait_s)
        return self._proc.exitcode

    @property
    def tmp_dir(self) -> str:
        """The child's own temporary directory (its TMPDIR): where it leaves files for the parent."""
        return self._tmp

    def death(self) -> str:
        """How the child ended (after its pipe closed)."""
        return self._death()

    def _first(self, timeout_s: float) -> dict[str, Any]:
        if not self._conn.poll(timeout_s):
            self.kill()
            raise FenceTimeout("fenced child did not start in time")
        try:
            header, _ = self.channel.recv()
        except (EOFError, OSError, ValueError) as exc:
            self.kill()
            raise FenceDied(self._death()) from exc
        return header

    def call(
        self,
        header: dict[str, Any],
        buffers: Sequence[bytes | memoryview] = (),
        timeout_s: float | None = None,
    ) -> tuple[dict[str, Any], list[memoryview]]:
        """Send one request and wait for its answer; kill the child if it does not answer in time."""
        with self._lock:
            try:
                self.channel.send(header, buffers)
                if not self.channel.poll(timeout_s):
                    self.kill()
                    raise FenceTimeout(f"model code did not answer within {timeout_s:.1f} s")
                reply, bufs = self.channel.recv()
            except (EOFError, OSError) as exc:
                self.kill()
                raise FenceDied(self._death()) from exc
        if "died" in reply:
            self.kill()
            raise FenceDied(str(reply["died"]))
        return reply, bufs

    def _death(self) -> str:
        code = self.exitcode(1)
        if code is not None and code < 0:
            name = signal.Signals(-code).name
            return f"model process was killed ({name}{', CPU time limit' if name == 'SIGXCPU' else ''})"
        return f"model process exited (code {code})"

    def kill(self) -> None:
        if self._proc.is_alive():
            self._proc.kill()
        self._proc.join(5)
        self._conn.close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def close(self, timeout_s: float = 2.0) -> None:
        """Ask the child to stop (EOF on its pipe), then kill it if it lingers."""
        with contextlib.suppress(OSError):
            self._conn.close()
        self._proc.join(timeout_s)
        self.kill()
