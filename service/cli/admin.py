"""`kiln db`: direct database access, for operators on the host where the server's database is.
Keys and tenants are managed over HTTP (service/cli/keys.py); `kiln db create-key` is the one way
in when no key can make one over HTTP (the first admin key of a data directory whose keys were
made elsewhere; KILN_BOOTSTRAP_ADMIN_KEY seeds one only into a database that has none)."""

from typing import Annotated, Any

import typer

from service.cli.keys import Scope
from service.cli.output import Refused, print_json
from service.settings import Settings

db_app = typer.Typer(help="the database, directly (on the server's host)", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """alembic upgrade to the latest revision"""
    from migrations.upgrade import upgrade

    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)
    print("database is at the latest revision")


def _existing_database(settings: Settings) -> Any:
    """Sessions on the server's database; refused, with nothing created, where there is none (an
    embedded SQLite file that is not there: run where the data directory is)."""
    from model_store.db import make_db_engine, make_sessionmaker

    if not settings.database_url:
        path = (settings.data_dir / "kiln.db").resolve()
        if not path.is_file():
            raise Refused(
                f"no database at {path}: run this where the server keeps its data (KILN_DATA_DIR) "
                "or set KILN_DATABASE_URL; with a running server, use `kiln keys create` and a key"
            )
    return make_sessionmaker(make_db_engine(settings.resolved_database_url))


@db_app.command("create-key")
def db_create_key(
    scope: Annotated[list[Scope], typer.Option(help="repeat for several scopes")],
    tenant: Annotated[
        str | None, typer.Option(help="an existing tenant (default: the default tenant)")
    ] = None,
    name: Annotated[str, typer.Option(help="a label for the key")] = "",
) -> None:
    """make a key straight in the database (recovery: no key needed); prints the secret once"""
    from model_store.errors import NotFound
    from service.tenancy import api_keys as keys
    from service.tenancy import tenants
    from service.tenancy.key_admin import key_public

    settings = Settings()
    sessions = _existing_database(settings)
    name_of_tenant = tenant or settings.default_tenant
    try:
        tenant_id = tenants.by_name(sessions, name_of_tenant).id
    except NotFound:  # a database no gateway has seeded yet: its first tenant
        tenant_id = tenants.create_tenant(sessions, name_of_tenant).id
    row, secret = keys.create_key(sessions, tenant_id, [s.value for s in scope], name=name)
    print_json({**key_public(row).model_dump(mode="json"), "key": secret})
