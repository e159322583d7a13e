"""One fine-tune run: optimizer, schedule, epochs, evaluation, checkpoint state.

Deterministic on CPU for a given seed, data and hyperparameters: the global torch RNG is seeded
once (and saved in every checkpoint), each epoch's shuffle uses its own generator seeded from
(seed, epoch), so a run resumed from a checkpoint draws exactly what an uninterrupted one would.
Checkpoint state holds only tensors, numbers and strings (loadable with weights_only=True).

Distributed (a RankInfo given): the module trains under DDP, each rank on its DistributedSampler
share of the epoch (seeded with the job's seed, set_epoch per epoch: the same shares after a
resume) in batches of ceil(batch_size / world), so a step still sees about batch_size rows;
gradients are averaged across ranks, the step loss reported is the mean over the ranks, and
every rank evaluates the same (identical) weights on the whole validation set.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from model_store.signature import Signature
from workers.contract.datasets import Dataset
from workers.contract.finetune_spec import Hyperparameters, JobSpec, chosen_metric
from workers.finetune import distributed, scores
from workers.finetune.causal import causal_evaluate, causal_loss, causal_row_losses
from workers.finetune.distributed import RankInfo
from workers.finetune.model import first_output, trainable_names

StepHook = Callable[[dict[str, Any]], None]
Rows = Callable[[Dataset], tuple[torch.Tensor, torch.Tensor]]
MAX_PROBABILITY_CLASSES = 64  # more classes: the results file has no probabilities column


@dataclass(slots=True)
class Progress:
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps completed
    best: float = math.inf  # the chosen metric's best value, oriented so that lower is better
    bad_epochs: int = 0
    stopped_early: bool = False
    best_epoch: int = 0


@dataclass(slots=True)
class EpochResult:
    epoch: int
    step: int
    train: list[dict[str, Any]] = field(default_factory=list)
    valid: dict[str, Any] = field(default_factory=dict)


def split(ds: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """A seeded hold-out split (the same rows for the same seed)."""
    order = np.random.default_rng(seed).permutation(len(ds))
    n_valid = max(1, round(len(ds) * fraction))
    take_v, take_t = np.sort(order[:n_valid]), np.sort(order[n_valid:])

    def pick(idx: np.ndarray) -> Dataset:
        return Dataset(ds.inputs[idx], ds.labels[idx], [ds.lines[i] for i in idx.tolist()])

    return pick(take_t), pick(take_v)


def _optimizer(params: list[torch.Tensor], hp: Hyperparameters) -> torch.optim.Optimizer:
    lr, wd = hp.learning_rate, hp.weight_decay
    if hp.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd)
    if hp.optimizer == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd)
    if hp.optimizer == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=wd)
    if hp.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=wd)
    if hp.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    return torch.optim.Adam(params, lr=lr, weight_decay=wd)


def lr_factor(hp: Hyperparameters, steps_per_epoch: int) -> Callable[[int], float]:
    total = max(1, steps_per_epoch * hp.epochs)
    warmup = hp.warmup_steps

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        done = (step - warmup) / max(1, total - warmup)
        if hp.lr_scheduler == "linear":
            return max(0.0, 1.0 - done)
        if hp.lr_scheduler == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, done)))
        if hp.lr_scheduler == "step":
            return float(hp.gamma ** ((step // steps_per_epoch) // hp.step_size))
        return 1.0

    return factor


def to_tensors(
    ds: Dataset,
    sig: Signature,
    classification: bool,
    device: torch.device,
    encode: Callable[[list[str]], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A dataset's inputs and labels as tensors for a model of signature `sig`."""
    if ds.is_text:
        if encode is None:
            raise ValueError("text rows need a text model")
        x = encode([str(t) for t in ds.inputs]).to(device)
    else:
        x = torch.from_numpy(ds.inputs.copy()).to(device)
    if sig.inputs[0].datatype == "FP64":
        x = x.double()
    if classification:
        return x, torch.from_numpy(ds.labels.astype(np.int64)).to(device)
    y = torch.from_numpy(ds.labels.astype(np.float32))
    if y.ndim == 1:
        y = y.unsqueeze(1)
    return x, y.to(device)


class Run:
    def __init__(
        self,
        module: Any,
        sig: Signature,
        train: Dataset,
        valid: Dataset,
        spec: JobSpec,
        seed: int,
        device: torch.device,
        encode: Callable[[list[str]], torch.Tensor] | None = None,
        rank: RankInfo | None = None,
        lora: tuple[list[str], Rows | None] | None = None,
    ) -> None:
        """`encode` turns text rows into the model's input tensor (text models: hf-encoder);
        `rank`: this process's place in a distributed job (None: the only process); `lora`: the
        parameters a LoRA fine-tune trains (only those are checkpointed) and, for rows `encode`
        does not cover (chat), what turns a dataset into (inputs, labels)."""
        self.module, self.sig, self.spec, self.seed, self.device = module, sig, spec, seed, device
        self.encode = encode
        self.hp = spec.hyperparameters
        self.classification = spec.task == "classification"
        self.causal = spec.task == "causal-lm"
        self.metric = chosen_metric(spec.task, spec.promote_metric)
        self.rows = lora[1] if lora is not None else None
        # early stopping keeps the best epoch's weights (on the CPU) to restore into the result
        self.best_state: dict[str, torch.Tensor] | None = None
        self.train_x, self.train_y = self._tensors(train)
        self.valid_x, self.valid_y = self._tensors(valid)
        self.valid_lines = list(valid.lines)
        names = set(lora[0]) if lora is not None else set(trainable_names(module, self.hp.freeze))
        self.saved = names if lora is not None else None  # None: the whole state is checkpointed
        self.params = []
        for n, p in module.named_parameters():
            p.requires_grad_(n in names)
            if n in names:
                self.params.append(p)
        self.rank = rank
        world = rank.world if rank is not None else 1
        self.batch_size = math.ceil(self.hp.batch_size / world)  # per rank
        self.steps_per_epoch = math.ceil(math.ceil(len(train) / world) / self.batch_size)
        self.train_module = distributed.wrap(module, device) if rank is not None else module
        self.opt = _optimizer(self.params, self.hp)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_factor(self.hp, self.steps_per_epoch))
        self.progress = Progress()
        self.last_step_seconds = 0.0  # wall time of the last optimizer step (for the metrics)
        torch.manual_seed(seed)

    def _tensors(self, ds: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
        if self.rows is not None:
            x, y = self.rows(ds)
            return x.to(self.device), y.to(self.device)
        return to_tensors(ds, self.sig, self.classification, self.device, self.encode)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.hp.epochs

    @property
    def trained_tokens(self) -> int | None:
        """Text models: the non-padding tokens of the training rows times the epochs run."""
        if (self.encode is None and self.rows is None) or self.train_x.ndim != 3:
            return None
        return int(self.train_x[:, 1].sum()) * self.progress.epoch

    def done(self) -> bool:
        return self.progress.epoch >= self.hp.epochs or self.progress.stopped_early

    # one epoch -----------------------------------------------------------------------------------
    def train_epoch(self, on_step: StepHook) -> EpochResult:
        epoch = self.progress.epoch + 1
        order = self._order(epoch)
        self.module.train()
        rows: list[dict[str, Any]] = []
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size].to(self.device)
            t0 = time.perf_counter()
            loss = self._step(self.train_x[idx], self.train_y[idx])  # float(loss) waits for the device
            self.last_step_seconds = time.perf_counter() - t0
            if self.rank is not None:
                loss = distributed.mean(loss, self.device)
            self.progress.step += 1
            row = {
                "step": self.progress.step,
                "epoch": epoch,
                "train_loss": loss,
                "lr": float(self.sched.get_last_lr()[0]),
            }
            rows.append(row)
            on_step(row)
        result = EpochResult(epoch, self.progress.step, rows, self.evaluate())
        result.valid["train_loss"] = float(np.mean([r["train_loss"] for r in rows]))
        self._after_epoch(result)
        return result

    def _order(self, epoch: int) -> torch.Tensor:
        """The row order of an epoch: a seeded permutation, or this rank's DistributedSampler share."""
        if self.rank is None:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            return torch.randperm(len(self.train_x), generator=gen)
        from torch.utils.data import DistributedSampler

        rows: Any = range(len(self.train_x))  # a sized sequence is all the sampler reads
        sampler: DistributedSampler[int] = DistributedSampler(
            rows, self.rank.world, self.rank.rank, shuffle=True, seed=self.seed
        )
        sampler.set_epoch(epoch)
        return torch.tensor(list(sampler), dtype=torch.long)

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        if self.hp.dropout > 0 and x.is_floating_point():
            x = F.dropout(x, p=self.hp.dropout, training=True)
        out = first_output(self.train_module, x, self.sig)
        loss = self._loss(out, y)
        total = loss
        if self.hp.l1 > 0:
            total = total + self.hp.l1 * sum(p.abs().sum() for p in self.params)
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        if self.hp.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.hp.max_grad_norm)
        self.opt.step()
        self.sched.step()
        return float(loss.detach())

    def _loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.causal:
            return causal_loss(out, y)
        if self.classification:
            return F.cross_entropy(out, y)
        return F.mse_loss(out.reshape(y.shape), y)

    def _after_epoch(self, result: EpochResult) -> None:
        """Track the best epoch by the chosen metric; stop after `patience` epochs without one."""
        p = self.progress
        p.epoch = result.epoch
        es = self.hp.early_stopping
        value = result.valid.get(self.metric)
        score = scores.oriented(self.metric, float(value)) if value is not None else math.inf
        if score < p.best - (es.min_delta if es else 0.0):
            p.best, p.bad_epochs, p.best_epoch = score, 0, result.epoch
            if es is not None:
                self.best_state = self._snapshot()
        else:
            p.bad_epochs += 1
        result.valid["best_epoch"] = p.best_epoch
        if es is not None and p.bad_epochs >= es.patience:
            p.stopped_early = True
            result.valid["stopped_early"] = True
        if self.rank is not None:  # the ranks agree on stopping, whatever their float rounding
            p.stopped_early = distributed.any_rank(p.stopped_early, self.device)

    def _snapshot(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu", copy=True) for k, v in self._model_state().items()}

    def _model_state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint keeps of the model: everything, or (LoRA) the trained tensors only."""
        state = self.module.state_dict()
        return state if self.saved is None else {k: v for k, v in state.items() if k in self.saved}

    def _load_model_state(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state, strict=self.saved is None)

    def restore_best(self) -> bool:
        """With early stopping, put the best epoch's weights back (True if that changed them)."""
        p = self.progress
        if self.hp.early_stopping is None or self.best_state is None or p.best_epoch == p.epoch:
            return False
        self._load_model_state(self.best_state)
        return True

    def load_best(self, data: bytes) -> None:
        """The best epoch's weights from its checkpoint (a resumed run whose best is earlier)."""
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        self.best_state = dict(state["model"])

    # evaluation ----------------------------------------------------------------------------------
    def evaluate(self, module: Any | None = None) -> dict[str, Any]:
        if self.causal:
            return causal_evaluate(module or self.module, self.valid_x, self.valid_y)
        return evaluate(module or self.module, self.sig, self.valid_x, self.valid_y, self.classification)

    def predictions(self, module: Any | None = None) -> tuple[list[Any], list[list[float]] | None]:
        """Per validation row: the predicted class and the class probabilities (classification)
        or the predicted value(s) and None (regression)."""
        module = module or self.module
        if self.causal:  # per row: its mean token loss (lower is better)
            return causal_row_losses(module, self.valid_x, self.valid_y), None
        was_training = module.training
        module.eval()
        with torch.no_grad():
            out = forward_all(module, self.valid_x, self.sig)
        module.train(was_training)
        if self.classification:
            probs = torch.softmax(out.double(), dim=1).cpu()
            predicted = [int(v) for v in probs.argmax(dim=1).tolist()]
            if probs.shape[1] > MAX_PROBABILITY_CLASSES:  # keep the results file to a sane size
                return predicted, None
            return predicted, probs.tolist()
        return list(out.reshape(self.valid_y.shape).cpu().tolist()), None

    # checkpoint state ----------------------------------------------------------------------------
    def state_bytes(self) -> bytes:
        p = self.progress
        state = {
            "model": self._model_state(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "rng": torch.get_rng_state(),
            "progress": {
                "epoch": p.epoch,
                "step": p.step,
                "best": p.best,
                "bad_epochs": p.bad_epochs,
                "stopped_early": p.stopped_early,
                "best_epoch": p.best_epoch,
            },
        }
        buf = io.BytesIO()
        torch.save(state, buf)
        return buf.getvalue()

    def load_state(self, data: bytes) -> None:
        state = torch.load(io.BytesIO(data), map_location=self.device, weights_only=True)
        self._load_model_state(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"].cpu())
        self.progress = Progress(**state["progress"])
        if self.hp.early_stopping is not None and self.progress.best_epoch == self.progress.epoch:
            self.best_state = self._snapshot()


EVAL_CHUNK = 256


def forward_all(module: Any, x: torch.Tensor, sig: Signature) -> torch.Tensor:
    """The first output over all rows, EVAL_CHUNK rows at a time (bounded memory for large
    validation sets, e.g. tokenised texts through an encoder)."""
    if len(x) <= EVAL_CHUNK:
        return first_output(module, x, sig)
    return torch.cat([first_output(module, x[i : i + EVAL_CHUNK], sig) for i in range(0, len(x), EVAL_CHUNK)])


def evaluate(
    module: Any, sig: Signature, x: torch.Tensor, y: torch.Tensor, classification: bool
) -> dict[str, Any]:
    was_training = module.training
    module.eval()
    with torch.no_grad():
        out = forward_all(module, x, sig)
        if classification:
            loss = F.cross_entropy(out, y)
            probs = torch.softmax(out.double(), dim=1).cpu().numpy()
            metrics = scores.classification(probs, y.cpu().numpy())
        else:
            pred = out.reshape(y.shape)
            loss = F.mse_loss(pred, y)
            metrics = scores.regression(pred.double().cpu().numpy(), y.double().cpu().numpy())
    module.train(was_training)
    return {"valid_loss": float(loss), **metrics}
