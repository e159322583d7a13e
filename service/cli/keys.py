"""`kiln keys ...` and `kiln tenants ...`: over HTTP, like any client. A `manage` key manages its
own tenant's keys; an `admin` key also another tenant's (`--tenant`) and creates tenants. The
server decides (a key never creates or revokes one with more power than its own), so these run
from anywhere and touch nothing on the machine they run on."""

from enum import StrEnum
from typing import Annotated, Any

import typer

from service.cli.output import print_json, table
from service.cli.remote import DEFAULT_URL, AsJson, Key, Url, connect

keys_app = typer.Typer(help="API keys (over HTTP)", no_args_is_help=True)
tenants_app = typer.Typer(help="tenants (over HTTP, an admin key)", no_args_is_help=True)


class Scope(StrEnum):
    infer = "infer"
    manage = "manage"
    finetune = "finetune"
    admin = "admin"


Tenant = Annotated[
    str | None, typer.Option(help="another tenant (an admin key only; default: the key's own)")
]
KeyId = Annotated[int, typer.Argument(metavar="ID", help="the key's id (kiln keys list)")]


@keys_app.command("create")
def keys_create(
    scope: Annotated[list[Scope], typer.Option(help="repeat for several scopes")],
    tenant: Tenant = None,
    name: Annotated[str, typer.Option(help="a label for the key")] = "",
    url: Url = DEFAULT_URL,
    key: Key = "",
) -> None:
    """create a key with at most the calling key's power; prints the secret, shown only once"""
    with connect(url, key) as client:
        print_json(client.create_key([s.value for s in scope], tenant=tenant, name=name))


@keys_app.command("list")
def keys_list(tenant: Tenant = None, url: Url = DEFAULT_URL, key: Key = "", as_json: AsJson = False) -> None:
    """the tenant's keys (prefixes only: a secret is shown once, when it is made)"""
    with connect(url, key) as client:
        keys = client.list_keys(tenant)
    if as_json:
        print_json(keys)
        return
    rows = [
        (k["id"], k["name"] or "-", k["prefix"], k["scopes"], _state(k), k["created_at"], k.get("expires_at"))
        for k in keys
    ]
    table("keys", ["id", "name", "prefix", "scopes", "state", "created", "expires"], rows)


def _state(key: dict[str, Any]) -> str:
    if key.get("revoked_at"):
        return "revoked"
    return "active" if key.get("active") else "expired"


@keys_app.command("revoke")
def keys_revoke(key_id: KeyId, tenant: Tenant = None, url: Url = DEFAULT_URL, key: Key = "") -> None:
    """revoke a key (every gateway refuses it within the key cache TTL)"""
    with connect(url, key) as client:
        print_json(client.revoke_key(key_id, tenant))


@keys_app.command("rotate")
def keys_rotate(
    key_id: KeyId,
    overlap: Annotated[
        int | None, typer.Option(help="seconds the old key still works (default: the server's setting)")
    ] = None,
    tenant: Tenant = None,
    url: Url = DEFAULT_URL,
    key: Key = "",
) -> None:
    """issue a successor with the same power; prints its secret, shown only once"""
    with connect(url, key) as client:
        print_json(client.rotate_key(key_id, overlap, tenant))


@tenants_app.command("create")
def tenants_create(name: str, url: Url = DEFAULT_URL, key: Key = "") -> None:
    """create a tenant"""
    with connect(url, key) as client:
        print_json(client.create_tenant(name))


@tenants_app.command("list")
def tenants_list(url: Url = DEFAULT_URL, key: Key = "", as_json: AsJson = False) -> None:
    """every tenant"""
    with connect(url, key) as client:
        tenants = client.list_tenants()
    if as_json:
        print_json(tenants)
        return
    table(
        "tenants",
        ["id", "name", "limits", "created"],
        [(t["id"], t["name"], t.get("limits"), t["created_at"]) for t in tenants],
    )
