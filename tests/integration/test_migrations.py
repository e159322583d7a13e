"""`alembic upgrade head` on an empty database builds exactly the schema the code uses."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from migrations.upgrade import upgrade
from model_store.db import Base, make_db_engine


def _diff(url: str) -> list[object]:
    db_engine = make_db_engine(url)
    try:
        with db_engine.connect() as conn:
            return list(compare_metadata(MigrationContext.configure(conn), Base.metadata))
    finally:
        db_engine.dispose()


def test_postgres_schema_matches_the_code(pg_template: str) -> None:
    # pg_template was migrated from an empty database by the conftest fixture
    from tests.conftest import _pg_url

    assert _diff(_pg_url(pg_template)) == []


def test_sqlite_schema_matches_the_code(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'kiln.db'}"
    upgrade(url)
    assert _diff(url) == []
    upgrade(url)  # idempotent
