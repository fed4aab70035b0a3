"""Alembic environment: runs on the connection handed over by server.store.migrations.upgrade."""

from __future__ import annotations

from alembic import context

from server.store.models import Base

config = context.config
target_metadata = Base.metadata


def run_offline() -> None:
    # `alembic upgrade --sql` for DBAs who apply the DDL themselves.
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations through server.store.migrations.upgrade(url)")
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
