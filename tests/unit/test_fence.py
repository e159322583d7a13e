"""The OS fence around model code: a fenced child reads its artifact and nothing else, reaches no
TCP port, cannot signal or read its parent, sees no secrets, and is killed past its deadline."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch

from model_store import netns
from model_store.channel import FenceError
from model_store.fence import FencedChild, FenceDied, FenceSpec, FenceTimeout, fence_available

pytestmark = pytest.mark.skipif(not fence_available(), reason="Landlock is not available on this kernel")


@pytest.fixture
def listener() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    yield s
    s.close()


def _unix_listener(tmp_path: Path) -> Path:
    path = tmp_path / "kiln.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.listen()
    _LISTENERS.append(s)
    return path


_LISTENERS: list[socket.socket] = []


def _child(
    tmp_path: Path, port: int, cuda: bool = False, **spec: object
) -> tuple[FencedChild, dict[str, Any]]:
    secret = tmp_path / "admin.key"
    secret.write_text("kiln_secret")
    artifact = tmp_path / "artifact.bin"
    artifact.write_bytes(b"model bytes")
    os.environ["KILN_FENCE_TEST_SECRET"] = "s3cret"
    args = {
        "secret": str(secret),
        "artifact": str(artifact),
        "outside": str(tmp_path / "planted"),
        "port": port,
        "parent": os.getpid(),
        "unix": str(_unix_listener(tmp_path)),
        "cuda": cuda,
    }
    child = FencedChild("tests.fence_targets:probe", args, FenceSpec(read=(str(artifact),), **spec))  # type: ignore[arg-type]
    header, _ = child.channel.recv()
    return child, header


def test_fenced_child_reads_its_artifact_and_nothing_else(tmp_path: Path, listener: socket.socket) -> None:
    child, seen = _child(tmp_path, listener.getsockname()[1])
    try:
        assert seen["read_artifact"] == "allowed"
        assert seen["read_secret"] == "PermissionError"
        assert seen["write_outside"] == "PermissionError"
        assert not (tmp_path / "planted").exists()
        assert seen["tcp"] == "PermissionError"
        assert seen["signal_parent"] == "PermissionError"
        assert seen["parent_environ"] == "PermissionError"
        assert seen["env_secret"] == "KeyError"
        assert seen["unix_socket"] == "PermissionError"  # a Redis or fork-server socket by its path
        for door in ("udp", "tcp6", "loopback_listen", "netlink_route", "netlink_audit"):
            assert seen[door] == "PermissionError", door
        assert seen["user"] == "kiln-model"  # getpass.getuser() without /etc/passwd (a fine-tune needed it)
        reply, buffers = child.call({"op": "echo", "x": 1}, [b"abc"], timeout_s=10)
        assert reply == {"echo": {"op": "echo", "x": 1}} and buffers == [b"abc"]
    finally:
        child.close()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_gpu_child_runs_cuda_behind_the_whole_fence(tmp_path: Path, listener: socket.socket) -> None:
    """The CUDA driver cannot start behind the fence (seccomp or Landlock alone stop it, error 304 on
    an H100), so a gpu child opens its context first: CUDA then works and every door stays shut."""
    child, seen = _child(tmp_path, listener.getsockname()[1], cuda=True, gpu=True)
    try:
        assert seen["cuda"] == f"ok True {1 << 30}"
        assert seen["read_artifact"] == "allowed"
        for door in ("read_secret", "write_outside", "tcp", "signal_parent", "parent_environ", "unix_socket"):
            assert seen[door] == "PermissionError", door
        assert seen["env_secret"] == "KeyError"
    finally:
        child.close()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_a_gpu_child_without_a_gpu_says_so(tmp_path: Path, listener: socket.socket) -> None:
    with pytest.raises(FenceError, match="asks for CUDA and no GPU is present"):
        _child(tmp_path, listener.getsockname()[1], gpu=True)


def test_a_child_that_does_not_answer_is_killed_at_its_deadline(
    tmp_path: Path, listener: socket.socket
) -> None:
    child, _ = _child(tmp_path, listener.getsockname()[1])
    with pytest.raises(FenceTimeout):
        child.call({"op": "hang"}, timeout_s=0.5)
    assert not child.alive()


def test_the_memory_limit_kills_only_the_child(tmp_path: Path, listener: socket.socket) -> None:
    child, _ = _child(tmp_path, listener.getsockname()[1], memory_bytes=3 << 30)
    with pytest.raises(FenceDied, match=r"MemoryError|exited|killed"):
        child.call({"op": "allocate", "n": 4 << 30}, timeout_s=30)
    assert not child.alive()


def test_model_code_that_passes_no_check_still_reads_and_writes_nothing(tmp_path: Path) -> None:
    """The fence alone (no static check): a TorchScript model that reads or writes host files,
    loaded and run in a fenced child as the upload check and the worker do."""
    from tests.fence_models import reads_file, writes_file

    secret = tmp_path / "admin.key"
    secret.write_bytes(b"kiln_secret_bytes_" + b"q" * 46)
    target = tmp_path / "written-by-model"
    for name, data in (("reader.pt", reads_file(str(secret), 64)), ("writer.pt", writes_file(str(target)))):
        path = tmp_path / name
        path.write_bytes(data)
        child = FencedChild(
            "tests.fence_targets:run_torchscript_file", {"path": str(path)}, FenceSpec(read=(str(path),))
        )
        try:
            header, _ = child.channel.recv()
        finally:
            child.close()
        assert "Permission denied" in header.get("error", ""), header
        assert "result" not in header
    assert not target.exists()


@pytest.mark.skipif(not netns.available(), reason="no unprivileged user namespaces here")
def test_a_distributed_rank_reaches_only_its_own_loopback(tmp_path: Path, listener: socket.socket) -> None:
    """A DDP rank (model_store/netns.py) may open IPv4 TCP, and only inside a network namespace
    that holds nothing but its group's loopback: the host's ports (here a listener standing in for
    Redis or PostgreSQL on 127.0.0.1) and every other address are out of reach; files, signals,
    Unix and UDP sockets stay closed as for any fenced child."""
    net = netns.PrivateNetwork()
    group_dir = tmp_path / "group"
    group_dir.mkdir()
    try:
        child, seen = _child(tmp_path, listener.getsockname()[1], netns=net.pid, write=(str(group_dir),))
        child.close()
    finally:
        net.close()
    assert seen["loopback_listen"] == "allowed"  # gloo's pairs
    assert seen["netlink_route"] == "allowed"  # gloo lists the interfaces: only lo here
    assert seen["tcp"] == "ConnectionRefusedError"  # the host's 127.0.0.1 is not this one
    assert seen["internet"] in ("OSError", "TimeoutError")  # no route: "Network is unreachable"
    for door in (
        "read_secret",
        "write_outside",
        "signal_parent",
        "parent_environ",
        "unix_socket",
        "udp",
        "tcp6",
        "netlink_audit",
    ):
        assert seen[door] == "PermissionError", door
    assert seen["env_secret"] == "KeyError"
