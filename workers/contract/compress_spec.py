"""The declarative compression spec shared by the gateway (validation) and the trainer (execution).

A compression job is a row of the fine-tune jobs table with `kind = "compression"` (one lease,
event, cancel and idempotency machinery). Its `spec` column holds a `CompressSpec`: the method and
that method's bounded parameters. Unknown keys are refused (422 at the gateway); nothing here is
ever evaluated as code.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from workers.contract.finetune_spec import Hyperparameters

Method = Literal["quantize", "prune", "distill", "export"]
KIND = "compression"


class QuantizeParams(BaseModel):
    """int8: dynamic int8 (weights int8, activations quantised per batch at run time);
    fp16: half-precision weights (hf-encoder only; the runner computes in fp32)."""

    model_config = ConfigDict(extra="forbid")

    dtype: Literal["int8", "fp16"] = "int8"
    feed_forward: bool = Field(
        default=False,
        description="hf-encoder int8: run the feed-forward layers in dynamic int8 too (faster, less "
        "faithful); by default they are stored int8 and run in fp32, the attention in dynamic int8",
    )


class PruneParams(BaseModel):
    """Magnitude pruning of every 2-D weight of a linear layer (the head excepted), to `sparsity`:
    unstructured (the smallest |w| per layer) or structured (whole output rows by L2 norm); made
    permanent (zeros in the weights). With `fine_tune` (and a training file) the survivors are
    trained on with the pruned weights held at zero."""

    model_config = ConfigDict(extra="forbid")

    sparsity: float = Field(default=0.5, gt=0, lt=1)
    structure: Literal["unstructured", "structured"] = "unstructured"
    fine_tune: Hyperparameters | None = None


class DistillParams(BaseModel):
    """A student trained on a classification dataset against the teacher's soft targets:
    loss = alpha * T^2 * KL(student_T || teacher_T) + (1 - alpha) * CE(student, labels).
    The student is `student` (a version ref) or the teacher's encoder keeping `student_layers`
    of its layers (`layer_choice`: the first N, or spread evenly) with the teacher's head."""

    model_config = ConfigDict(extra="forbid")

    student: str | None = Field(default=None, min_length=1, max_length=128)
    student_layers: int | None = Field(default=None, ge=1, le=48)
    layer_choice: Literal["first", "spread"] = "spread"
    temperature: float = Field(default=2.0, gt=0, le=20)
    alpha: float = Field(default=0.5, ge=0, le=1)
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)


class ExportParams(BaseModel):
    """To ONNX with a dynamic batch axis, checked against the source on sample inputs."""

    model_config = ConfigDict(extra="forbid")

    opset: int = Field(default=17, ge=13, le=20)
    tolerance: float = Field(default=1e-4, gt=0, le=1.0)


PARAMS: dict[str, type[BaseModel]] = {
    "quantize": QuantizeParams,
    "prune": PruneParams,
    "distill": DistillParams,
    "export": ExportParams,
}
LATENCY_RUNS = (20, 7)  # timed rounds at least, at batch 1 and batch 32 (their median is reported)
LATENCY_TIMED_S = 0.5  # ... and timed rounds go on until this long has passed
# untimed calls first, per model and batch size, at least this many and this long: first-call
# allocations, lazy init, TorchScript's optimising executor (2nd-3rd call of a new shape), and the
# intra-op thread pool settling on a busy machine (seen: ~35 ms a call for the first 0.4 s
# against 0.03 ms after; timed, the "p50" of a small TorchScript model swung 1000x)
LATENCY_WARMUP = 5
LATENCY_WARMUP_S = 1.0
LATENCY_MAX_CALLS = 10_000  # per phase: the time minimums never make a fast model run forever


def parse_params(method: str, params: dict[str, Any]) -> BaseModel:
    """The method's parameters, validated (pydantic ValidationError when they are not)."""
    return PARAMS[method].model_validate(params)


class CompressSpec(BaseModel):
    """What the trainer needs beyond the job row's columns (stored as the row's `spec`)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["compression"] = "compression"
    method: Method
    params: dict[str, Any]
    student_version_id: int | None = None  # distill with a given student version
    promote: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    publish_existing: bool = True

    def typed(self) -> Any:
        return parse_params(self.method, self.params)
