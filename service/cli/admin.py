"""`kiln db`, `kiln keys`, `kiln tenants`: direct database access, for operators on the host."""

import json
from enum import StrEnum
from typing import Annotated, Any

import typer

from service.settings import Settings

db_app = typer.Typer(help="database schema", no_args_is_help=True)
keys_app = typer.Typer(help="API keys (direct database access)", no_args_is_help=True)
tenants_app = typer.Typer(help="tenants (direct database access)", no_args_is_help=True)


class Scope(StrEnum):
    infer = "infer"
    manage = "manage"
    finetune = "finetune"
    admin = "admin"


Tenant = Annotated[str | None, typer.Option(help="tenant name (default: the default tenant)")]


def _sessions() -> Any:
    from model_store.db import make_db_engine, make_sessionmaker

    return make_sessionmaker(make_db_engine(Settings().resolved_database_url))


def _tenant_id(sessions: Any, name: str | None) -> int:
    from service.tenancy import tenants

    return tenants.by_name(sessions, name or Settings().default_tenant).id


def _key_json(row: Any) -> dict[str, Any]:
    from service.tenancy.key_admin import key_public

    return key_public(row).model_dump(mode="json")


def _line(obj: Any) -> None:
    print(json.dumps(obj), flush=True)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """alembic upgrade to the latest revision"""
    from migrations.upgrade import upgrade

    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)
    print("database is at the latest revision")


@keys_app.command("create")
def keys_create(
    scope: Annotated[list[Scope], typer.Option(help="repeat for several scopes")],
    tenant: Tenant = None,
    name: Annotated[str | None, typer.Option(help="a label for the key")] = None,
) -> None:
    """create a key (direct database access); prints the secret once"""
    from model_store.blobs import BlobStore
    from model_store.registry import Registry
    from service.tenancy import api_keys as keys

    settings = Settings()
    sessions = _sessions()
    tenant_id = Registry(sessions, BlobStore(settings.blob_dir)).ensure_tenant(
        tenant or settings.default_tenant
    )
    row, secret = keys.create_key(sessions, tenant_id, [s.value for s in scope], name=name or "")
    _line({"id": row.id, "prefix": row.prefix, "scopes": row.scopes.split(","), "key": secret})


@keys_app.command("list")
def keys_list(tenant: Tenant = None) -> None:
    """list a tenant's keys (prefixes only), one JSON object a line"""
    from service.tenancy import api_keys as keys

    sessions = _sessions()
    for row in keys.list_keys(sessions, _tenant_id(sessions, tenant)):
        _line(_key_json(row))


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[int, typer.Argument(metavar="ID")], tenant: Tenant = None) -> None:
    """revoke a key"""
    from service.tenancy import api_keys as keys

    sessions = _sessions()
    _line(_key_json(keys.revoke(sessions, _tenant_id(sessions, tenant), key_id)))


@keys_app.command("rotate")
def keys_rotate(
    key_id: Annotated[int, typer.Argument(metavar="ID")],
    overlap: Annotated[
        int | None, typer.Option(help="seconds the old key still works (default: setting)")
    ] = None,
    tenant: Tenant = None,
) -> None:
    """issue a successor; the old key works for --overlap seconds"""
    from service.tenancy import api_keys as keys

    sessions = _sessions()
    seconds = Settings().key_rotation_overlap_s if overlap is None else overlap
    row, secret = keys.rotate(sessions, _tenant_id(sessions, tenant), key_id, seconds)
    _line({**_key_json(row), "key": secret})


@tenants_app.command("create")
def tenants_create(name: str) -> None:
    """create a tenant (direct database access)"""
    from service.tenancy import tenants

    row = tenants.create_tenant(_sessions(), name)
    _line({"id": row.id, "name": row.name})


@tenants_app.command("list")
def tenants_list() -> None:
    """list tenants, one JSON object a line"""
    from service.tenancy import tenants

    for row in tenants.list_tenants(_sessions()):
        _line({"id": row.id, "name": row.name, "limits": row.limits})
