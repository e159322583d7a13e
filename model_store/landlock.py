"""Landlock (Linux >= 5.13) through its three system calls.

Written by hand (about 100 lines) because PyPI's `landlock` (1.0.0.dev5, a pre-release) knows
filesystem rules only: the fence here also needs TCP rules (ABI 4) and scoping of abstract Unix
sockets and signals (ABI 6), and must choose the access rights the running kernel knows.

A ruleset restricts the calling thread and every thread or process it creates afterwards, so it
is applied at the start of a fresh, single-threaded child process (model_store.fence).
"""

from __future__ import annotations

import ctypes
import os
import platform
from pathlib import Path

_SYSCALLS = {"x86_64": (444, 445, 446), "aarch64": (444, 445, 446)}
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38

# Filesystem rights, by the ABI that introduced them.
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FS_ABI1 = (1 << 13) - 1  # execute .. make_sym
_REFER, _TRUNCATE, _IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | _TRUNCATE | _IOCTL_DEV
READ = EXECUTE | READ_FILE | READ_DIR
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1
_SCOPE_ABSTRACT_UNIX, _SCOPE_SIGNAL = 1 << 0, 1 << 1


class LandlockUnavailable(OSError):
    """This kernel (or this platform) cannot apply a Landlock ruleset."""


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def abi_version() -> int:
    """The kernel's Landlock ABI version; 0 when Landlock is not there."""
    numbers = _SYSCALLS.get(platform.machine())
    if numbers is None or platform.system() != "Linux":
        return 0
    version = _libc().syscall(numbers[0], None, ctypes.c_size_t(0), _CREATE_RULESET_VERSION)
    return max(int(version), 0)


def _fs_rights(abi: int) -> int:
    rights = _FS_ABI1
    if abi >= 2:
        rights |= _REFER
    if abi >= 3:
        rights |= _TRUNCATE
    if abi >= 5:
        rights |= _IOCTL_DEV
    return rights


def restrict(read: list[Path], write: list[Path], tcp: bool = False) -> int:
    """Allow reading (and executing) beneath `read`, reading and writing beneath `write`, no TCP
    (ABI >= 4) unless `tcp` (a distributed job's ranks, inside a private network namespace that
    holds only loopback: model_store/netns.py), no abstract Unix sockets or signals outside the
    domain (ABI >= 6); deny the rest of the filesystem. Returns the ABI used. Paths that do not
    exist are skipped."""
    abi = abi_version()
    if abi < 1:
        raise LandlockUnavailable("Landlock is not available on this kernel")
    create, add_rule, restrict_self = _SYSCALLS[platform.machine()]
    libc = _libc()
    handled = _fs_rights(abi)
    attr = _RulesetAttr(handled, (_NET_BIND_TCP | _NET_CONNECT_TCP) if abi >= 4 and not tcp else 0, 0)
    if abi >= 6:
        attr.scoped = _SCOPE_ABSTRACT_UNIX | _SCOPE_SIGNAL
    size = ctypes.sizeof(_RulesetAttr) if abi >= 6 else (16 if abi >= 4 else 8)
    ruleset = libc.syscall(create, ctypes.byref(attr), ctypes.c_size_t(size), 0)
    if ruleset < 0:
        raise LandlockUnavailable(f"landlock_create_ruleset failed: {os.strerror(ctypes.get_errno())}")
    try:
        write_rights = handled & ~_REFER
        for paths, rights in ((read, READ & handled), (write, write_rights)):
            for path in paths:
                _add_path(libc, add_rule, ruleset, path, rights)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise LandlockUnavailable("prctl(PR_SET_NO_NEW_PRIVS) failed")
        if libc.syscall(restrict_self, ruleset, 0) != 0:
            raise LandlockUnavailable(f"landlock_restrict_self failed: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(ruleset)
    return abi


def _add_path(libc: ctypes.CDLL, add_rule: int, ruleset: int, path: Path, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        if not os.path.isdir(path):
            rights &= _FILE_RIGHTS
        rule = _PathBeneathAttr(rights, fd)
        if libc.syscall(add_rule, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), 0) != 0:
            raise LandlockUnavailable(
                f"landlock_add_rule failed for {path.name!r}: {os.strerror(ctypes.get_errno())}"
            )
    finally:
        os.close(fd)


# seccomp: no new sockets. Landlock does not govern connect() to a Unix socket by its path (the
# fork server's listener, a Redis socket); a fenced child needs no socket but the pipe it was
# given, so socket() and io_uring (which can make sockets without socket()) fail with EPERM.
# A distributed job's rank may make IPv4 stream (TCP) sockets, for gloo's pairs over 127.0.0.1
# in its private network namespace, and NETLINK_ROUTE sockets, which gloo opens to list the
# interfaces (getifaddrs; there it sees only lo and, without capabilities, can change nothing);
# no Unix, packet, raw or UDP socket, no other netlink family.
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_NR_SOCKET = {"x86_64": 41, "aarch64": 198}
_NR_IO_URING_SETUP = 425  # the same on both
_X32_BIT = 0x40000000
_AF_INET, _SOCK_STREAM, _SOCK_TYPE_MASK, _AF_NETLINK, _NETLINK_ROUTE = 2, 1, 0xF, 16, 0
_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 22, 2
_RET_ALLOW, _RET_EPERM = 0x7FFF0000, 0x00050000 | 1
# BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_JMP|JGE|K, BPF_ALU|AND|K, BPF_RET|K
_LD, _JEQ, _JGE, _AND, _RET = 0x20, 0x15, 0x35, 0x54, 0x06


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def _socket_filter(machine: str, inet_stream: bool) -> list[tuple[int, int, int, int]]:
    head = [
        (_LD, 0, 0, 4),  # seccomp_data.arch
        (_JEQ, 1, 0, _AUDIT_ARCH[machine]),
        (_RET, 0, 0, _RET_EPERM),  # another ABI (int 0x80, socketcall): nothing at all
        (_LD, 0, 0, 0),  # seccomp_data.nr
    ]
    if not inet_stream:
        return [
            *head,
            (_JGE, 3, 0, _X32_BIT),
            (_JEQ, 2, 0, _NR_SOCKET[machine]),
            (_JEQ, 1, 0, _NR_IO_URING_SETUP),
            (_RET, 0, 0, _RET_ALLOW),
            (_RET, 0, 0, _RET_EPERM),
        ]
    return [
        *head,
        (_JGE, 12, 0, _X32_BIT),
        (_JEQ, 11, 0, _NR_IO_URING_SETUP),
        (_JEQ, 1, 0, _NR_SOCKET[machine]),
        (_RET, 0, 0, _RET_ALLOW),
        (_LD, 0, 0, 16),  # args[0] (low word): the domain
        (_JEQ, 0, 3, _AF_INET),
        (_LD, 0, 0, 24),  # args[1] (low word): the type, with SOCK_CLOEXEC / SOCK_NONBLOCK
        (_AND, 0, 0, _SOCK_TYPE_MASK),
        (_JEQ, 3, 4, _SOCK_STREAM),
        (_JEQ, 0, 3, _AF_NETLINK),
        (_LD, 0, 0, 32),  # args[2] (low word): the protocol
        (_JEQ, 0, 1, _NETLINK_ROUTE),
        (_RET, 0, 0, _RET_ALLOW),
        (_RET, 0, 0, _RET_EPERM),
    ]


def deny_new_sockets(inet_stream: bool = False) -> bool:
    """Install the seccomp filter above on this thread (and what it creates); needs
    PR_SET_NO_NEW_PRIVS, which `restrict` sets. False where the platform is not known."""
    machine = platform.machine()
    if machine not in _AUDIT_ARCH or platform.system() != "Linux":
        return False
    program = _socket_filter(machine, inet_stream)
    filters = (_SockFilter * len(program))(*(_SockFilter(*f) for f in program))
    prog = _SockFprog(len(program), filters)
    libc = _libc()
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        raise LandlockUnavailable(f"seccomp filter refused: {os.strerror(ctypes.get_errno())}")
    return True
