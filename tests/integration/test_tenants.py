"""Tenants and keys over HTTP: key lifecycle, isolation, sharing; the host-only key command."""

from __future__ import annotations

import json

from service.cli.main import main as kiln
from service.openai_errors import is_openai
from tests.conftest import WorkerThread
from tests.integration.helpers import infer_body, operator_metrics, register
from tests.integration.tenancy import eventually, new_key, new_tenant
from tests.models import demo_onnx_bytes

BODY = infer_body("x", [1, 2, 3, 4], [1, 4])


async def test_key_secret_shown_once_and_stored_hashed(client, registry) -> None:
    await new_tenant(client, "acme")
    r = await client.post("/v1/keys", json={"scopes": ["infer"], "tenant": "acme", "name": "ci"})
    assert r.status_code == 201
    created = r.json()
    secret = created["key"]
    assert secret.startswith(created["prefix"]) and created["active"]
    listed = (await client.get("/v1/keys")).json()["data"]
    assert all("key" not in k and secret not in json.dumps(k) for k in listed)
    assert created["id"] not in [k["id"] for k in listed]  # acme's key is not the admin's tenant's
    with registry.sessions() as s:
        from model_store.db import ApiKeyRow

        row = s.get(ApiKeyRow, created["id"])
        assert row.key_hash != secret and secret not in (row.prefix, row.key_hash)


async def test_revoked_key_stops_within_seconds(client, worker: WorkerThread) -> None:
    assert (await register(client, "demo", demo_onnx_bytes(), "onnx")).status_code == 201
    key_id, auth = await new_key(client, ["infer"])
    assert (await client.post("/v2/models/demo/infer", json=BODY, headers=auth)).status_code == 200
    assert (await client.delete(f"/v1/keys/{key_id}")).json()["active"] is False

    async def refused() -> bool:
        r = await client.post("/v2/models/demo/infer", json=BODY, headers=auth)
        return r.status_code == 401

    assert await eventually(refused, timeout=5.0)


async def test_rotation_overlap(client) -> None:
    key_id, old = await new_key(client, ["manage"])
    r = await client.post(f"/v1/keys/{key_id}/rotate", json={"overlap_s": 3600})
    assert r.status_code == 201, r.text
    new = {"Authorization": f"Bearer {r.json()['key']}"}
    assert r.json()["rotated_from"] == key_id and r.json()["scopes"] == ["manage"]
    assert (await client.get("/v1/models", headers=old)).status_code == 200  # overlap window
    assert (await client.get("/v1/models", headers=new)).status_code == 200
    r = await client.post(f"/v1/keys/{r.json()['id']}/rotate", json={"overlap_s": 0})
    newest = {"Authorization": f"Bearer {r.json()['key']}"}

    async def old_refused() -> bool:
        return (await client.get("/v1/models", headers=new)).status_code == 401

    assert await eventually(old_refused)
    assert (await client.get("/v1/models", headers=newest)).status_code == 200


async def test_keys_cannot_grant_more_than_their_creator(client) -> None:
    _id, manage = await new_key(client, ["manage"])
    r = await client.post("/v1/keys", json={"scopes": ["admin"]}, headers=manage)
    assert r.status_code == 403
    r = await client.post("/v1/keys", json={"scopes": ["infer"]}, headers=manage)
    assert r.status_code == 403  # a manage-only key lacks infer
    r = await client.post("/v1/keys", json={"scopes": ["manage"], "tenant": "default"}, headers=manage)
    assert r.status_code == 403
    assert (await client.post("/v1/tenants", json={"name": "x"}, headers=manage)).status_code == 403
    r = await client.post("/v1/keys", json={"scopes": ["manage"]}, headers=manage)
    assert r.status_code == 201


async def test_another_tenants_objects_are_404(client) -> None:
    assert (await register(client, "demo", demo_onnx_bytes(), "onnx")).status_code == 201
    key_id, _ = await new_key(client, ["infer"])
    await new_tenant(client, "other")
    _oid, other = await new_key(client, ["infer", "manage"], tenant="other")
    for method, path in (
        ("GET", "/v1/models/demo"),
        ("GET", "/v1/models/demo/versions/1"),
        ("GET", "/v2/models/demo"),
        ("POST", "/v2/models/demo/infer"),
        ("GET", f"/v1/keys/{key_id}"),
        ("DELETE", f"/v1/keys/{key_id}"),
        ("POST", f"/v1/keys/{key_id}/rotate"),
        ("GET", "/v1/models/demo/sharing"),
        ("GET", "/v2/models/default~demo"),
        ("POST", "/v2/models/default~demo/infer"),
    ):
        r = await client.request(method, path, headers=other, json=BODY if "infer" in path else None)
        assert r.status_code == 404, (method, path, r.text)
        if is_openai(method, path):  # GET /v1/models/{id} answers in OpenAI's shape
            assert r.json()["error"]["code"] == "model_not_found"
        else:
            assert set(r.json()) == {"error", "code"}
    # the same name in the other tenant is a different model
    assert (await client.post("/v1/models", json={"name": "demo"}, headers=other)).status_code == 201


async def test_sharing_read_only_and_public(client, worker: WorkerThread) -> None:
    assert (await register(client, "demo", demo_onnx_bytes(), "onnx")).status_code == 201
    await new_tenant(client, "guest")
    await new_tenant(client, "stranger")
    _g, guest = await new_key(client, ["infer", "manage"], tenant="guest")
    _s, stranger = await new_key(client, ["infer"], tenant="stranger")
    r = await client.put("/v1/models/demo/sharing", json={"tenants": ["guest"]})
    assert r.status_code == 200, r.text
    assert r.json() == {
        "model": "demo",
        "visibility": "private",
        "tenants": ["guest"],
        "allow_finetune": False,
        "shared_name": "default~demo",
    }

    async def guest_can_infer() -> bool:
        r = await client.post("/v2/models/default~demo/infer", json=BODY, headers=guest)
        return r.status_code == 200

    assert await eventually(guest_can_infer)
    assert (await client.get("/v2/models/default~demo", headers=guest)).json()["versions"] == ["1"]
    assert (
        await client.post("/v2/models/default~demo/infer", json=BODY, headers=stranger)
    ).status_code == 404
    # read-only: the management API still sees only the guest's own models
    assert (await client.get("/v1/models/demo", headers=guest)).status_code == 404
    r = await client.put("/v1/models/demo/sharing", json={"visibility": "public"}, headers=guest)
    assert r.status_code == 404
    r = await client.put("/v1/models/demo/sharing", json={"visibility": "public"})
    assert r.json()["tenants"] == []

    async def stranger_can_infer() -> bool:
        r = await client.post("/v2/models/default~demo/infer", json=BODY, headers=stranger)
        return r.status_code == 200

    assert await eventually(stranger_can_infer)
    await client.put("/v1/models/demo/sharing", json={"visibility": "private"})

    async def stranger_refused() -> bool:
        r = await client.post("/v2/models/default~demo/infer", json=BODY, headers=stranger)
        return r.status_code == 404

    assert await eventually(stranger_refused)


async def test_model_allowlist(client) -> None:
    assert (await register(client, "demo", demo_onnx_bytes(), "onnx")).status_code == 201
    assert (await register(client, "other", demo_onnx_bytes(), "onnx")).status_code == 201
    _id, auth = await new_key(client, ["infer"], models=["other"])
    r = await client.get("/v2/models/demo", headers=auth)
    assert r.status_code == 403
    r = await client.post("/v2/models/demo/infer", json=BODY, headers=auth)
    assert r.status_code == 403
    assert (await client.get("/v2/models/other", headers=auth)).status_code == 200


async def test_tenants_admin_api(client) -> None:
    await new_tenant(client, "acme", {"rate_per_s": 5})
    assert (await client.post("/v1/tenants", json={"name": "acme"})).status_code == 409
    assert (await client.post("/v1/tenants", json={"name": "Bad Name"})).status_code == 422
    names = [t["name"] for t in (await client.get("/v1/tenants")).json()["data"]]
    assert names == ["default", "acme"]
    r = await client.put("/v1/tenants/acme/limits", json={"max_concurrent": 3})
    assert r.json()["limits"]["max_concurrent"] == 3 and r.json()["limits"]["rate_per_s"] == 0
    assert (await client.put("/v1/tenants/nope/limits", json={})).status_code == 404


async def test_an_admin_names_another_tenant_and_no_other_key_may(client) -> None:
    """`?tenant=` on the key routes: an admin key reads, rotates and revokes another tenant's
    keys; any other key is 403 for naming a tenant at all (its own included, an unknown one too:
    tenant names are not for it to probe), and without naming one sees only its own tenant's."""
    await new_tenant(client, "acme")
    await new_tenant(client, "other")
    acme_id, _acme = await new_key(client, ["infer"], tenant="acme")
    spare_id, _spare = await new_key(client, ["infer"], tenant="acme")
    _oid, other = await new_key(client, ["manage", "infer", "finetune"], tenant="other")
    mine_id, _mine = await new_key(client, ["infer"])

    listed = (await client.get("/v1/keys", params={"tenant": "acme"})).json()["data"]
    assert [k["id"] for k in listed] == [acme_id, spare_id]
    r = await client.get(f"/v1/keys/{acme_id}", params={"tenant": "acme"})
    assert r.status_code == 200 and r.json()["id"] == acme_id, r.text
    assert (await client.get(f"/v1/keys/{acme_id}")).status_code == 404  # not in the admin's tenant
    r = await client.post(f"/v1/keys/{spare_id}/rotate", params={"tenant": "acme"}, json={"overlap_s": 0})
    assert r.status_code == 201 and r.json()["rotated_from"] == spare_id, r.text
    r = await client.delete(f"/v1/keys/{acme_id}", params={"tenant": "acme"})
    assert r.status_code == 200 and r.json()["active"] is False, r.text
    assert (await client.get("/v1/keys", params={"tenant": "nope"})).status_code == 404

    assert [k["id"] for k in (await client.get("/v1/keys", headers=other)).json()["data"]] == [_oid]
    for tenant in ("default", "other", "nope"):
        for method, path in (
            ("GET", "/v1/keys"),
            ("GET", f"/v1/keys/{mine_id}"),
            ("DELETE", f"/v1/keys/{mine_id}"),
            ("POST", f"/v1/keys/{mine_id}/rotate"),
        ):
            r = await client.request(method, path, params={"tenant": tenant}, headers=other)
            assert r.status_code == 403 and "only an admin key" in r.json()["error"], (method, path, r.text)
    for method, path in (("DELETE", f"/v1/keys/{mine_id}"), ("POST", f"/v1/keys/{mine_id}/rotate")):
        assert (await client.request(method, path, headers=other)).status_code == 404
    mine = {k["id"]: k for k in (await client.get("/v1/keys")).json()["data"]}
    assert mine[mine_id]["active"] is True and mine[mine_id]["revoked_at"] is None


def test_cli_db_create_key_is_the_host_only_way_in(settings, monkeypatch, capsys, tmp_path) -> None:
    """`kiln db create-key`: a key made straight in the server's database (no key needed), its
    tenant created if missing; where there is no database it creates nothing."""
    from migrations.upgrade import upgrade

    # the root logger must not keep a handler on pytest's captured (later closed) stderr
    monkeypatch.setattr("service.cli.main._setup_logging", lambda: None)
    monkeypatch.setenv("KILN_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("KILN_DATA_DIR", str(tmp_path / "never-made"))
    upgrade(settings.database_url)

    def run(*argv: str) -> dict:
        assert kiln(list(argv)) == 0
        return dict(json.loads(capsys.readouterr().out))

    admin = run("db", "create-key", "--scope", "admin", "--name", "recovery")
    assert admin["scopes"] == ["admin"] and admin["key"].startswith("kiln_") and admin["name"] == "recovery"
    acme = run("db", "create-key", "--scope", "infer", "--tenant", "acme")
    assert acme["scopes"] == ["infer"] and acme["key"] != admin["key"]
    assert kiln(["db", "create-key", "--scope", "infer", "--tenant", "Bad Name"]) == 1
    assert capsys.readouterr().err.startswith("kiln: ")

    monkeypatch.delenv("KILN_DATABASE_URL")  # embedded SQLite in a data directory that is not there
    assert kiln(["db", "create-key", "--scope", "admin"]) == 1
    assert capsys.readouterr().err.startswith(f"kiln: no database at {tmp_path / 'never-made' / 'kiln.db'}")
    assert not (tmp_path / "never-made").exists()


async def test_expired_key_is_refused(client) -> None:
    _id, auth = await new_key(client, ["manage"], expires_in_s=1)
    listed = {k["id"]: k for k in (await client.get("/v1/keys")).json()["data"]}
    assert listed[_id]["expires_at"] is not None

    async def refused() -> bool:
        return (await client.get("/v1/models", headers=auth)).status_code == 401

    assert await eventually(refused, timeout=5.0)
    listed = {k["id"]: k for k in (await client.get("/v1/keys")).json()["data"]}
    assert listed[_id]["active"] is False


async def test_tenant_metrics_are_labelled(client, worker: WorkerThread) -> None:
    assert (await register(client, "demo", demo_onnx_bytes(), "onnx")).status_code == 201
    assert (await client.post("/v2/models/demo/infer", json=BODY)).status_code == 200
    assert (await client.get("/metrics")).status_code == 404  # not on the public port
    text = operator_metrics(client)
    assert 'kiln_tenant_inference_requests_total{model="demo",outcome="success",tenant="1"}' in text
    assert worker.sample("kiln_tenant_inference_count_total") == 1


def test_bootstrap_admin_tolerates_a_concurrent_seed(settings, registry, monkeypatch) -> None:
    """Two gateway processes starting together both see no key; the second insert must not
    fail the process's startup."""
    from service import app as app_mod

    app_mod.bootstrap_admin(settings, registry, registry.sessions)
    monkeypatch.setattr(app_mod.keys, "count_keys", lambda _sessions: 0)  # the race window
    app_mod.bootstrap_admin(settings, registry, registry.sessions)  # no IntegrityError
