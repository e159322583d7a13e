"""The rank side of a distributed fine-tune (DDP), inside each rank's fenced child.

A job with `resources.processes` N > 1 runs as N fenced children started by the trainer
(workers/finetune/group.py), all in one private network namespace (model_store/netns.py). They
meet through a torch FileStore in a directory the trainer made for the group (the one directory
all ranks may write) and talk over gloo (CPU: TCP on 127.0.0.1, the only address in their
namespace) or NCCL (GPU). Rank 0 alone reports, evaluates the parent, writes checkpoints and
exports the result; every rank trains on its DistributedSampler share of each epoch.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

STORE_NAME = "rendezvous"  # the FileStore's file in the group directory
_TIMEOUT = datetime.timedelta(minutes=10)  # a collective waiting longer than this fails


@dataclass(frozen=True, slots=True)
class RankInfo:
    rank: int
    world: int
    store: str  # the FileStore's path
    backend: str  # "gloo" or "nccl"

    @property
    def main(self) -> bool:
        return self.rank == 0


def rank_info(args: dict[str, Any]) -> RankInfo | None:
    """The rank this child is, from its arguments (None: a single-process job)."""
    d = args.get("dist")
    if not d:
        return None
    return RankInfo(int(d["rank"]), int(d["world"]), str(d["store"]), str(d["backend"]))


def init(info: RankInfo) -> None:
    """Join the group (blocks until every rank has joined)."""
    store = dist.FileStore(info.store, info.world)
    dist.init_process_group(
        info.backend, store=store, rank=info.rank, world_size=info.world, timeout=_TIMEOUT
    )


def wrap(module: Any, device: torch.device) -> Any:
    """The module under DDP: gradients averaged across ranks in backward; parameters and
    buffers broadcast from rank 0 now (every rank starts from rank 0's weights)."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index or 0] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def mean(value: float, device: torch.device) -> float:
    """`value` averaged over the ranks (the loss reported for a step)."""
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when `flag` is true on one (rank 0's early stop, for instance)."""
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
