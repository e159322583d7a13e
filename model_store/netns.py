"""A private network for the ranks of one distributed job: a user and network namespace that
holds only the loopback interface.

The ranks of a distributed fine-tune talk to each other (gloo over TCP on 127.0.0.1). The fence
forbids every socket to every other fenced child; for the ranks it opens IPv4 TCP and nothing
else (model_store/landlock.py), and only inside the namespace made here, where 127.0.0.1 is the
one address there is: a rank can reach the other ranks of its group and nothing on the host or
beyond it (no route, no other interface, not the host's loopback).

`PrivateNetwork` starts a small holder process (unshare(CLONE_NEWUSER | CLONE_NEWNET), identity
uid/gid maps, loopback up) that lives as long as the group. Each rank joins its namespaces with
`join` first thing in its fenced child (single-threaded, before Landlock and seccomp), then drops
the capabilities joining gave it. Needs unprivileged user namespaces (Linux default; on
Kubernetes a pod with `hostUsers: false` or a runtime that allows them); `available` says.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

_CLONE_NEWUSER, _CLONE_NEWNET = 0x10000000, 0x40000000
_CAP_VERSION_3 = 0x20080522

# run by the holder: new namespaces, identity maps, lo up, then wait for stdin to close
_HOLDER = r"""
import ctypes, fcntl, os, socket, struct, sys
uid, gid = os.getuid(), os.getgid()
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x10000000 | 0x40000000) != 0:
    sys.stdout.write("unshare: " + os.strerror(ctypes.get_errno()) + "\n"); sys.exit(1)
with open("/proc/self/setgroups", "w") as f: f.write("deny")
with open("/proc/self/uid_map", "w") as f: f.write(f"{uid} {uid} 1")
with open("/proc/self/gid_map", "w") as f: f.write(f"{gid} {gid} 1")
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
fcntl.ioctl(s, 0x8914, struct.pack("16sH14x", b"lo", 0x1 | 0x8 | 0x40))  # SIOCSIFFLAGS up
s.close()
sys.stdout.write("ready\n"); sys.stdout.flush()
sys.stdin.read()
"""


class NetnsUnavailable(OSError):
    """This machine cannot make a private network namespace (no unprivileged user namespaces)."""


class PrivateNetwork:
    """The holder of one group's namespaces; `pid` is what ranks `join`. Close it after the group."""

    def __init__(self, timeout_s: float = 30.0) -> None:
        self._proc = subprocess.Popen(  # our own interpreter and code
            [sys.executable, "-I", "-c", _HOLDER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={"PATH": os.environ.get("PATH", "")},
            text=True,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().strip()  # the holder answers at once or exits
        if line != "ready":
            self.close()
            raise NetnsUnavailable(f"no private network namespace here: {line or 'holder exited'}")

    @property
    def pid(self) -> int:
        return self._proc.pid

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait(5)
        for stream in (self._proc.stdin, self._proc.stdout):
            if stream is not None:
                stream.close()


def available() -> bool:
    try:
        PrivateNetwork().close()
    except (NetnsUnavailable, OSError):
        return False
    return True


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint32) for name in ("effective", "permitted", "inheritable")]


def join(holder_pid: int) -> None:
    """Enter the holder's user and network namespaces (this process must be single-threaded),
    then drop every capability (joining a user namespace grants all of them inside it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for kind, flag in (("user", _CLONE_NEWUSER), ("net", _CLONE_NEWNET)):
        fd = os.open(f"/proc/{holder_pid}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            if libc.setns(fd, flag) != 0:
                raise NetnsUnavailable(f"setns({kind}) failed: {os.strerror(ctypes.get_errno())}")
        finally:
            os.close(fd)
    header, data = _CapHeader(_CAP_VERSION_3, 0), (_CapData * 2)()
    if libc.capset(ctypes.byref(header), data) != 0:
        raise NetnsUnavailable(f"capset failed: {os.strerror(ctypes.get_errno())}")
