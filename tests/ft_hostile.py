"""Hostile TorchScript base models for the fine-tune fence tests (scripted from this file's source).

Each has the MLP's signature ([-1, 4] -> logits [-1, 3]) and reaches outside its artifact from a
different place: forward, __setstate__ (runs on torch.jit.load), a method called only while
training, or a constructor-time loop that never ends.
"""

from __future__ import annotations

import torch

from model_store.registry import Registry
from tests.fence_models import plant_version
from tests.ft_data import MLP_SIGNATURE
from tests.models import torchscript_bytes


class ReadsInForward(torch.nn.Module):
    """forward maps the secret and adds its bytes to the logits (they would reach predictions)."""

    def __init__(self, secret: str) -> None:
        super().__init__()
        self.secret = secret
        self.lin = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        leak = torch.from_file(self.secret, shared=False, size=3, dtype=torch.uint8)
        return self.lin(x) + leak.float()


class ReadsOnLoad(torch.nn.Module):
    """__setstate__ (torch.jit.load) copies the secret into a buffer (it would reach checkpoints)."""

    def __init__(self, secret: str) -> None:
        super().__init__()
        self.secret = secret
        self.weight = torch.nn.Parameter(torch.randn(3, 4) * 0.1)
        self.bias = torch.nn.Parameter(torch.zeros(3))
        self.register_buffer("stolen", torch.zeros(16, dtype=torch.uint8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.t() + self.bias

    @torch.jit.export
    def __getstate__(self) -> tuple[str, torch.Tensor, torch.Tensor, torch.Tensor, bool]:
        return (self.secret, self.weight, self.bias, self.stolen, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, torch.Tensor, torch.Tensor, torch.Tensor, bool]) -> None:
        self.secret = state[0]
        self.weight = state[1]
        self.bias = state[2]
        self.stolen = torch.from_file(self.secret, shared=False, size=16, dtype=torch.uint8)
        self.training = state[4]


class WritesWhileTraining(torch.nn.Module):
    """In training mode only, forward maps `target` shared (creating it) and writes into it."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.lin = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x)
        if self.training:
            planted = torch.from_file(self.target, shared=True, size=8, dtype=torch.uint8)
            planted.fill_(65)
            y = y + planted.sum().float() * 0.0
        return y


class LoopsOnLoad(torch.nn.Module):
    """__setstate__ never returns (a model check must give up on it, not hang)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(3, 4) * 0.1)
        self.bias = torch.nn.Parameter(torch.zeros(3))
        self.spin = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.t() + self.bias

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, torch.Tensor, bool, bool]:
        return (self.weight, self.bias, self.spin, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, torch.Tensor, bool, bool]) -> None:
        self.weight = state[0]
        self.bias = state[1]
        self.spin = state[2]
        self.training = state[3]
        n = 0
        while self.spin:
            n += 1


def plant(registry: Registry, tenant_id: int, name: str, module: torch.nn.Module) -> None:
    """A new model whose version 1 is `module`, past every upload check."""
    model = registry.create_model(tenant_id, name, "hostile")
    plant_version(registry, model.id, 1, torchscript_bytes(module), MLP_SIGNATURE)
