"""Access control on real processes (issue 16), each finding as an attacker would try it:
a manage key taking over an admin key, restrictions lost by minting, the allowlist skipped on
/v1/models, a read-only share fine-tuned into a private copy, a finetune key publishing into an
existing model, /metrics telling strangers, and the priority cap."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.cli.client import KilnClient
from tests.conftest import ADMIN_KEY
from tests.e2e.harness import Stack
from tests.ft_data import MLP_SIGNATURE, jsonl, mlp_bytes, rows
from tests.models import onnx_add_bytes

pytestmark = pytest.mark.e2e
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
X = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0.1, 0.2, 0.3, 0.4]}


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _mint(c: httpx.Client, headers: dict[str, str] | None = None, **body: Any) -> httpx.Response:
    return c.post("/v1/keys", json=body, headers=headers or AUTH)


def _push_onnx(c: httpx.Client, name: str, headers: dict[str, str] | None = None) -> httpx.Response:
    c.post("/v1/models", json={"name": name}, headers=headers or AUTH)
    return c.post(
        f"/v1/models/{name}/versions",
        data={"format": "onnx"},
        files={"file": ("m.onnx", onnx_add_bytes())},
        headers=headers or AUTH,
    )


def test_a_manage_key_cannot_take_over_or_revoke_an_admin_key(stack: Stack) -> None:
    stack.start_gateway()
    with httpx.Client(base_url=stack.url, timeout=30) as c:
        admin_id = next(
            k["id"] for k in c.get("/v1/keys", headers=AUTH).json()["data"] if k["name"] == "bootstrap"
        )
        manage = _bearer(_mint(c, scopes=["manage"]).json()["key"])
        r = c.post(f"/v1/keys/{admin_id}/rotate", json={"overlap_s": 0}, headers=manage)
        assert r.status_code == 403 and "more power" in r.json()["error"], r.text
        assert c.delete(f"/v1/keys/{admin_id}", headers=manage).status_code == 403
        assert c.get("/v1/tenants", headers=AUTH).status_code == 200  # the real admin still works
        # a key of equal power may rotate and revoke; the successor has exactly its power
        peer = _mint(c, scopes=["manage"], models=["a"], limits={"rate_per_s": 5}, priority_cap=2).json()
        succ = c.post(f"/v1/keys/{peer['id']}/rotate", json={"overlap_s": 0}, headers=manage).json()
        for field in ("scopes", "models", "limits", "priority_cap", "expires_at"):
            assert succ[field] == peer[field], field
        assert c.delete(f"/v1/keys/{succ['id']}", headers=manage).status_code == 200


def test_minted_keys_inherit_restrictions_and_cannot_ask_for_more(stack: Stack) -> None:
    stack.start_gateway()
    with httpx.Client(base_url=stack.url, timeout=30) as c:
        parent = _mint(
            c,
            scopes=["manage", "infer"],
            models=["alpha", "beta"],
            expires_in_s=3600,
            limits={"rate_per_s": 10, "max_concurrent": 4},
            priority_cap=2,
        ).json()
        p = _bearer(parent["key"])
        child = _mint(c, p, scopes=["infer"]).json()
        assert child["models"] == ["alpha", "beta"]
        assert child["expires_at"] == parent["expires_at"]
        assert child["limits"]["rate_per_s"] == 10 and child["limits"]["max_concurrent"] == 4
        assert child["priority_cap"] == 2
        narrower = _mint(c, p, scopes=["infer"], models=["alpha"], limits={"rate_per_s": 1}).json()
        assert narrower["models"] == ["alpha"] and narrower["limits"]["max_concurrent"] == 4
        for more in (
            {"models": ["gamma"]},
            {"expires_in_s": 7200},
            {"limits": {"rate_per_s": 100}},
            {"limits": {"max_concurrent": 0}},  # unlimited, when the parent is limited
            {"priority_cap": 1},
            {"scopes": ["finetune"]},
        ):
            r = _mint(c, p, **{"scopes": ["infer"], **more})
            assert r.status_code == 403, (more, r.text)
            assert "more power than its own" in r.json()["error"]
        # the allowlist holds on the management routes too
        assert _push_onnx(c, "gamma").status_code == 201  # the admin's model
        assert _push_onnx(c, "gamma", p).status_code == 403
        assert c.put("/v1/models/gamma/aliases/production", json={"version": 1}, headers=p).status_code == 403
        assert c.put("/v1/models/gamma/sharing", json={}, headers=p).status_code == 403
        assert c.post("/v1/models", json={"name": "delta"}, headers=p).status_code == 403
        assert c.post("/v2/repository/models/gamma/load", headers=p).status_code == 403
        assert _push_onnx(c, "alpha").status_code == 201
        assert [m["name"] for m in c.get("/v1/models", headers=p).json()["data"]] == ["alpha"]
        assert _push_onnx(c, "alpha", p).status_code == 201


def test_metrics_are_for_operators_only(stack: Stack) -> None:
    stack.start_gateway(processes=2)
    with httpx.Client(base_url=stack.url, timeout=30) as c:
        c.post("/v1/tenants", json={"name": "acme"}, headers=AUTH)
        acme = _bearer(_mint(c, scopes=["manage", "infer"], tenant="acme").json()["key"])
        assert _push_onnx(c, "secret-model", acme).status_code == 201
        bad = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]}
        assert c.post("/v2/models/secret-model/infer", json=bad, headers=acme).status_code == 400
        public = httpx.get(f"{stack.url}/metrics", timeout=10)
        assert public.status_code == 404
        assert "secret-model" not in public.text and "tenant" not in public.text
    operators = httpx.get(f"http://127.0.0.1:{stack.gateway_metrics_port}/metrics", timeout=10).text
    assert 'model="secret-model"' in operators and "kiln_tenant_inference_requests_total{" in operators


def _setup_classifier(kiln: KilnClient, tmp_path: Path, name: str) -> str:
    (tmp_path / "clf.pt").write_bytes(mlp_bytes())
    kiln.push_model(name, tmp_path / "clf.pt", "torchscript", signature=MLP_SIGNATURE)
    (tmp_path / "train.jsonl").write_bytes(jsonl(*rows(60, 1)))
    return str(kiln.upload_file(tmp_path / "train.jsonl")["id"])


def test_the_finetune_scope_makes_new_models_only(stack: Stack, tmp_path: Path) -> None:
    stack.start_gateway()
    admin = KilnClient(stack.url, ADMIN_KEY)
    train = _setup_classifier(admin, tmp_path, "clf")
    with httpx.Client(base_url=stack.url, timeout=60) as c:
        ft = _bearer(_mint(c, scopes=["finetune"]).json()["key"])
        body = {"model": "clf", "training_file": train, "hyperparameters": {"epochs": 1}}
        r = c.post("/v1/fine_tuning/jobs", json={**body, "target_model": "clf"}, headers=ft)
        assert r.status_code == 403 and "manage" in r.json()["error"]["message"], r.text
        r = c.post("/v1/fine_tuning/jobs", json={**body, "target_model": "clf-new"}, headers=ft)
        assert r.status_code == 200, r.text
        both = _bearer(_mint(c, scopes=["finetune", "manage"]).json()["key"])
        r = c.post("/v1/fine_tuning/jobs", json={**body, "target_model": "clf"}, headers=both)
        assert r.status_code == 200, r.text
        allow = _bearer(_mint(c, scopes=["finetune"], models=["clf"]).json()["key"])
        r = c.post("/v1/fine_tuning/jobs", json={**body, "target_model": "other"}, headers=allow)
        assert r.status_code == 403, r.text  # the allowlist covers the target model too


def _wait(stack: Stack, fetch: Any, done: Any, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while not done(value := fetch()):
        stack.check_alive()
        assert time.monotonic() < deadline, f"timed out: {value}"
        time.sleep(0.1)
    return value


def test_a_shared_model_is_fine_tuned_only_with_a_grant_and_unsharing_stops_the_copy(
    stack: Stack, tmp_path: Path
) -> None:
    stack.start_gateway()
    stack.start_worker("worker")
    stack.start_trainer("trainer")
    owner = KilnClient(stack.url, ADMIN_KEY)
    _setup_classifier(owner, tmp_path, "clf")
    with httpx.Client(base_url=stack.url, timeout=60) as c:
        c.post("/v1/tenants", json={"name": "guest"}, headers=AUTH)
        guest_key = _mint(c, scopes=["manage", "infer", "finetune"], tenant="guest").json()["key"]
        guest = KilnClient(stack.url, guest_key)
        (tmp_path / "g.jsonl").write_bytes(jsonl(*rows(60, 2)))
        train = guest.upload_file(tmp_path / "g.jsonl")["id"]
        job = {"model": "default~clf", "training_file": train, "seed": 1, "hyperparameters": {"epochs": 1}}
        g = _bearer(guest_key)
        assert c.put("/v1/models/clf/sharing", json={"tenants": ["guest"]}, headers=AUTH).status_code == 200
        r = c.post("/v2/models/default~clf/infer", json={"inputs": [X]}, headers=g)
        assert r.status_code == 200, r.text  # read-only sharing: calling works
        r = c.post("/v1/fine_tuning/jobs", json={**job, "target_model": "mine"}, headers=g)
        assert r.status_code == 403 and "fine-tun" in r.json()["error"]["message"], r.text

        grant = {"tenants": ["guest"], "allow_finetune": True}
        assert c.put("/v1/models/clf/sharing", json=grant, headers=AUTH).json()["allow_finetune"] is True
        r = c.post("/v1/fine_tuning/jobs", json={**job, "target_model": "mine"}, headers=g)
        assert r.status_code == 200, r.text
        done = _wait(
            stack, lambda: guest.get_job(r.json()["id"]), lambda j: j["status"] in ("succeeded", "failed")
        )
        assert done["status"] == "succeeded", done
        lineage = guest.get_version("mine", 1)["lineage"]
        assert lineage["base_grants"][0]["owner_name"] == "default" and lineage["parent"]["model"] == "clf"
        assert c.post("/v2/models/mine/infer", json={"inputs": [X]}, headers=g).status_code == 200

        assert c.put("/v1/models/clf/sharing", json={"tenants": ["guest"]}, headers=AUTH).status_code == 200
        _wait(  # within the version cache TTL (2 s) the copy stops serving
            stack,
            lambda: c.post("/v2/models/mine/infer", json={"inputs": [X]}, headers=g).status_code,
            lambda code: code == 404,
            timeout=10,
        )
        assert c.post("/v2/models/default~clf/infer", json={"inputs": [X]}, headers=g).status_code == 200
        assert json.loads(c.get("/v1/models/mine", headers=g).text)["versions"] == [1]
