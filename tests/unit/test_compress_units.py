"""Compression pieces without services: body validation, pruning masks, the student's layers,
int8 weights and the compressed hf-encoder bundle (a tiny random BERT), the CLI's table."""

from __future__ import annotations

import io
import json
import os
import tarfile
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from model_store.errors import InvalidArtifact
from model_store.hf_encoder import QUANT_CONFIG, open_bundle
from model_store.limits import ArtifactLimits
from service.cli.compress import comparison_rows
from service.compress.schemas import CompressionCreate
from tests.hf_tiny import tiny_bundle
from workers.common.hf_model import build_encoder, dequantized, embed, make_tokenizer, tokenize
from workers.contract.compress_spec import PruneParams
from workers.finetune import compress_methods, compress_train

torch.set_num_threads(1)


@pytest.mark.parametrize(
    ("body", "word"),
    [
        ({"method": "prune", "parameters": {"sparsity": 0}}, "sparsity"),
        ({"method": "prune", "parameters": {"structure": "rows"}}, "structure"),
        ({"method": "distill", "training_file": "f", "parameters": {}}, "exactly one"),
        ({"method": "distill", "training_file": "f", "parameters": {"student_layers": 99}}, "student_layers"),
        (
            {
                "method": "distill",
                "training_file": "f",
                "parameters": {"student_layers": 2, "temperature": 0},
            },
            "temperature",
        ),
        (
            {"method": "distill", "training_file": "f", "parameters": {"student_layers": 2, "alpha": 2}},
            "alpha",
        ),
        ({"method": "export", "parameters": {"tolerance": 5}}, "tolerance"),
        ({"method": "quantize", "parameters": {"dtype": "int4"}}, "dtype"),
        ({"method": "quantize", "suffix": "a", "target_model": "b"}, "not both"),
    ],
)
def test_bodies_are_bounded(body: dict, word: str) -> None:
    with pytest.raises(ValidationError, match=word):
        CompressionCreate.model_validate({"model": "m", **body})


def test_defaults_are_spelled_out() -> None:
    body = CompressionCreate.model_validate({"model": "m", "method": "prune"})
    assert body.parameters == {"sparsity": 0.5, "structure": "unstructured"}


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = torch.nn.Linear(8, 16), torch.nn.Linear(16, 16), torch.nn.Linear(16, 3)


@pytest.mark.parametrize("structure", ["unstructured", "structured"])
def test_masks_prune_to_the_target_and_spare_the_head(structure: str) -> None:
    torch.manual_seed(0)
    net = _Net()
    head = net.head.weight.detach().clone()
    found = compress_train.masks(net, PruneParams(sparsity=0.5, structure=structure))
    assert set(found) == {"a.weight", "b.weight"}
    compress_train.apply_masks(net, found)
    assert compress_train.sparsity(net, found) == 0.5
    assert torch.equal(net.head.weight, head)
    if structure == "structured":  # whole output rows
        assert int((net.b.weight.abs().sum(dim=1) == 0).sum()) == 8


def test_student_layers() -> None:
    assert compress_train.layer_subset(6, 3, "spread") == [0, 2, 5]
    assert compress_train.layer_subset(6, 3, "first") == [0, 1, 2]
    assert compress_train.layer_subset(6, 1, "spread") == [0]
    with pytest.raises(ValueError, match="fewer"):
        compress_train.layer_subset(6, 6, "first")


def test_int8_rows_round_trip() -> None:
    w = torch.randn(32, 64)
    q, scale = compress_methods.int8_rows(w)
    assert q.dtype == torch.int8 and scale.shape == (32,)
    back = dequantized({"w": q, "w.kiln_scale": scale})["w"]
    assert (back - w).abs().max() <= scale.max() / 2 + 1e-6


@pytest.mark.parametrize("scheme", ["dynamic-int8", "dynamic-int8-all", "fp16"])
def test_compressed_bundle_loads_and_stays_close(scheme: str, tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(os.environ, "TMPDIR", str(tmp_path))
    data = tiny_bundle()
    out = compress_methods.quantize_hf(data, scheme)
    assert len(out.data) < len(data)
    parent, child = (open_bundle(io.BytesIO(d), ArtifactLimits()) for d in (data, out.data))
    assert child.quant == scheme
    x = tokenize(make_tokenizer(parent), ["the chef baked bread", "the team won the match"])
    (pe, pt), (ce, ct) = build_encoder(parent), build_encoder(child)
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(embed(pe, pt, x), embed(ce, ct, x))
    assert float(cos.min()) > 0.98


def test_a_bundle_with_an_unknown_scheme_is_refused() -> None:
    buf = io.BytesIO(tiny_bundle())
    with tarfile.open(fileobj=buf, mode="a") as tar:
        body = json.dumps({"scheme": "int3"}).encode()
        info = tarfile.TarInfo(QUANT_CONFIG)
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    with pytest.raises(InvalidArtifact, match="scheme"):
        open_bundle(io.BytesIO(buf.getvalue()), ArtifactLimits())


def test_cli_comparison_rows() -> None:
    cmp = {
        "parent": {"bytes": 10, "latency_ms": {"p50_batch_1": 2.0, "p50_batch_32": 9.0}, "accuracy": 0.9},
        "result": {"bytes": 4, "latency_ms": {"p50_batch_1": 1.0, "p50_batch_32": 5.0}, "accuracy": 0.89},
        "cosine_min": 0.995,
    }
    rows = comparison_rows(cmp)
    assert rows[0] == ("artifact bytes", 10, 4) and ("validation accuracy", 0.9, 0.89) in rows
    assert rows[-1] == ("cosine_min", "", 0.995)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_an_int8_bundle_serves_dequantised_on_cuda(tmp_path, monkeypatch) -> None:
    """torch.ao dynamic int8 is CPU-only: on a GPU the runner serves the stored int8 weights
    dequantised, as close to the CPU's int8 answer as int8 activations allow."""
    import numpy as np

    from workers.inference.hf_runner import HFEncoderRunner

    monkeypatch.setitem(os.environ, "TMPDIR", str(tmp_path))
    out = compress_methods.quantize_hf(tiny_bundle(), "dynamic-int8-all")
    texts = np.array([b"the chef baked bread", b"the team won the match"], dtype=object)
    answers = [
        HFEncoderRunner(None, out.data, device, 1, ArtifactLimits()).run({"text": texts})["embedding"]  # type: ignore[arg-type]
        for device in ("cpu", "cuda")
    ]
    cos = (answers[0] * answers[1]).sum(1)
    assert float(cos.min()) > 0.98


def test_an_int8_bundle_fine_tunes_in_fp32(tmp_path, monkeypatch) -> None:
    from workers.common.hf_model import export_bundle, for_finetune

    monkeypatch.setitem(os.environ, "TMPDIR", str(tmp_path))
    out = compress_methods.quantize_hf(tiny_bundle(), "dynamic-int8")
    module, _encode, bundle = for_finetune(out.data, torch.device("cpu"), "classification", 2)
    assert all(p.dtype == torch.float32 for p in module.parameters())
    again = open_bundle(io.BytesIO(export_bundle(module, bundle, "classification")), ArtifactLimits())
    assert again.quant is None and again.head == {"task": "classification", "num_outputs": 2}


def test_torchscript_int8_is_a_valid_onnx_version(tmp_path, monkeypatch) -> None:
    """TorchScript -> ONNX -> onnxruntime dynamic int8: passes the ONNX upload checks (no custom-op
    domain, no external data) and answers close to its source."""
    from model_store.formats import validate
    from model_store.signature import Signature
    from tests.ft_data import MLP_SIGNATURE, mlp_bytes
    from workers.finetune.compress_measure import load_served, outputs

    monkeypatch.setitem(os.environ, "TMPDIR", str(tmp_path))
    sig = Signature.model_validate(MLP_SIGNATURE)
    data = mlp_bytes()
    exported = compress_methods.export_torchscript(data, sig, 17)
    quantized = compress_methods.quantize_onnx(exported.data, sig)
    path = tmp_path / "q.onnx"
    path.write_bytes(quantized.data)
    assert validate("onnx", path, sig) == sig
    rows = torch.randn(16, 4).numpy()
    parent, child = (
        load_served("torchscript", data, sig, None),
        load_served("onnx", quantized.data, sig, None),
    )
    assert (outputs(parent, rows) - outputs(child, rows)).abs().max() < 0.05


@pytest.mark.parametrize(
    ("method", "train"), [("distill", "file-t"), ("prune", "file-t"), ("quantize", None)]
)
def test_a_compression_lineage_names_its_training_file_as_fine_tunes_do(
    method: str, train: str | None
) -> None:
    """One shape for a lineage's training file, `{"id", "sha256"}` (model_store/blob_refs.py reads
    it when a file is deleted); a compression without one names none."""
    from types import SimpleNamespace

    from model_store.db import FineTuneJobRow
    from workers.contract.compress_spec import CompressSpec
    from workers.finetune.compress_job import _lineage

    files = {"file-t": SimpleNamespace(sha256="a" * 64)}
    ctx = SimpleNamespace(
        store=SimpleNamespace(get_file=lambda _tenant, file_id: files[file_id]),
        registry=SimpleNamespace(base_grants=lambda _version_id, _tenant: []),
    )
    row = FineTuneJobRow(
        id="ftjob-1", tenant_id=1, training_file=train or "", validation_file="file-v", seed=3
    )
    spec = CompressSpec(method=method, params={})  # type: ignore[arg-type]
    base = SimpleNamespace(model="clf", version=1, sha256="b" * 64, format="torchscript", version_id=7)
    lineage = _lineage(ctx, row, spec, base, SimpleNamespace(comparison={}))  # type: ignore[arg-type]
    expected = {"id": "file-t", "sha256": "a" * 64} if train else None
    assert lineage["training_file"] == expected and lineage["validation_file"] == "file-v"


class _Clock:
    """A clock the fake models advance: timing without sleeping."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _fake_served(
    clock: _Clock, name: str, slow_ms: float, slow_calls: int, ms: float, calls: list[Any]
) -> Any:
    """A model whose first `slow_calls` calls with each new input shape take `slow_ms` (first-call
    allocations, a JIT compiling for the shape), every later one `ms`."""
    from workers.finetune.compress_measure import Served

    seen: dict[tuple[int, ...], int] = {}

    def run(x: torch.Tensor) -> torch.Tensor:
        n = seen[tuple(x.shape)] = seen.get(tuple(x.shape), 0) + 1
        clock.now += (slow_ms if n <= slow_calls else ms) / 1000
        calls.append((name, id(x)))
        return x

    return Served(run, lambda rows: torch.as_tensor(rows), False)


def test_compression_latency_excludes_warm_up_and_times_both_sides_alike() -> None:
    import numpy as np

    from workers.contract.compress_spec import LATENCY_RUNS
    from workers.finetune.compress_measure import compare_latency

    clock, calls = _Clock(), []
    parent = _fake_served(clock, "parent", 1000.0, 3, 1.0, calls)
    result = _fake_served(clock, "result", 5000.0, 1, 2.0, calls)
    rows = np.zeros((24, 4), dtype=np.float32)
    parent_ms, result_ms = compare_latency(parent, result, rows, clock)
    assert parent_ms == {"p50_batch_1": 1.0, "p50_batch_32": 1.0}  # not 1000: warm-up is untimed
    assert result_ms == {"p50_batch_1": 2.0, "p50_batch_32": 2.0}
    # the timed rounds alternate the two models, each on one input prepared once per batch size
    names = [n for n, _ in calls]
    warmed = names.index("parent", names.index("result"))  # after each model's untimed calls
    assert names[warmed : warmed + 2 * LATENCY_RUNS[0]] == ["parent", "result"] * LATENCY_RUNS[0]
    assert len({x for n, x in calls if n == "parent"}) == 2  # one input per batch size
