"""The messages between a trainer and its fenced compression process
(workers/finetune/compress_child.py), validated by the parent like the fine-tune ones
(workers/contract/finetune_messages.py): the child runs tenant model code, so what it sends is
untrusted input.

child -> parent:
  step        one optimizer step of a prune fine-tune or a distillation: row {step, epoch, train_loss}
  compressed  the result: format, signature, artifact (a file name in the child's temp dir),
              comparison (parent vs child: artifact bytes, latency p50 at batch 1 and 32, the
              validation metric when a validation file was given, max_abs_diff for export,
              cosine similarity for an embedding model), metrics of the result
  error       the job cannot go on: code, message
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter

from workers.contract.finetune_messages import Error, Step, _Msg


class Compressed(_Msg):
    type: Literal["compressed"]
    format: Literal["torchscript", "hf-encoder", "onnx"]
    signature: dict[str, Any]
    artifact: str = Field(max_length=64)
    comparison: dict[str, Any]
    metrics: dict[str, float | bool] = Field(default_factory=dict)


CompressMessage = Annotated[Step | Compressed | Error, Field(discriminator="type")]
COMPRESS_MESSAGE: TypeAdapter[Step | Compressed | Error] = TypeAdapter(CompressMessage)
