"""Alembic environment: reads the same Settings object as the app."""

from __future__ import annotations

from alembic import context

from model_store.db import Base, make_db_engine
from service.settings import Settings

url = context.config.attributes.get("database_url") or Settings().resolved_database_url
db_engine = make_db_engine(url)

with db_engine.connect() as connection:
    context.configure(
        connection=connection, target_metadata=Base.metadata, render_as_batch=url.startswith("sqlite")
    )
    with context.begin_transaction():
        context.run_migrations()
db_engine.dispose()
