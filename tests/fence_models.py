"""TorchScript models that attack the host from inside their own code, built by the tests:
they read a host file, create a host file, or never return. Planted straight in the registry
and blob store where upload checks would refuse them: the fence around the worker's model
processes must hold on its own."""

from __future__ import annotations

from typing import Any

import torch

from model_store.db import ModelVersionRow
from model_store.registry import Registry
from model_store.signature import Signature, VersionConfig
from tests.models import torchscript_bytes


def plant_version(
    registry: Registry, model_id: int, version: int, data: bytes, signature: dict[str, Any]
) -> None:
    """A TorchScript version straight into the blob store and the database, past every upload
    check (as if a check had missed it): the fences must hold on their own."""
    sha, size = registry.blobs.put_bytes(data)
    with registry.sessions() as s:
        s.add(
            ModelVersionRow(
                model_id=model_id,
                version=version,
                format="torchscript",
                sha256=sha,
                size_bytes=size,
                signature=Signature.model_validate(signature).model_dump(mode="json"),
                config=VersionConfig().model_dump(mode="json"),
            )
        )
        s.commit()


class ReadsHostFile(torch.nn.Module):
    """At inference (never at the all-zeros warm-up) returns the first bytes of a host file."""

    def __init__(self, path: str, size: int) -> None:
        super().__init__()
        self.path = path
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x == 0).all()):
            return x * 3
        data = torch.from_file(self.path, shared=False, size=self.size, dtype=torch.uint8)
        return data[:2].to(torch.float32).expand(x.shape[0], 2).contiguous()


class WritesHostFile(torch.nn.Module):
    """Maps a host file shared (which creates it) on every call, the warm-up included."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        data = torch.from_file(self.path, shared=True, size=64, dtype=torch.uint8)
        data.fill_(120)
        return x * 3 + data[:1].to(torch.float32) * 0


class HangsOn(torch.nn.Module):
    """Never returns for an input holding the value -7 (the warm-up's zeros pass)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = 0
        while bool((x == -7.0).any()):
            n += 1
        return x * 3 + n


class Spin(torch.nn.Module):
    """Loops for a very long time on any input (its check, or its inference, never ends)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        acc = x
        for _ in range(2_000_000_000):
            acc = acc + 1.0
        return acc


class ReadsFile(torch.nn.Module):
    """Returns the first bytes of a host file as floats (what an attacker's model does)."""

    def __init__(self, path: str, size: int) -> None:
        super().__init__()
        self.path = path
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        data = torch.from_file(self.path, shared=False, size=self.size, dtype=torch.uint8)
        return x + data[: x.shape[-1]].to(torch.float32)


class WritesFile(torch.nn.Module):
    """Creates (or overwrites) a host file through a shared file-backed tensor."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        data = torch.from_file(self.path, shared=True, size=16, dtype=torch.uint8)
        data.fill_(65)
        return x + data[: x.shape[-1]].to(torch.float32) * 0.0  # used, so TorchScript keeps the call


def spin() -> bytes:
    return torchscript_bytes(Spin())


def reads_file(path: str, size: int) -> bytes:
    return torchscript_bytes(ReadsFile(path, size))


def writes_file(path: str) -> bytes:
    return torchscript_bytes(WritesFile(path))
