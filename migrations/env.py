"""Alembic environment: the models of db.py are the target; the URL comes from migrate.py or the command line.

migrate.upgrade() passes the database URL in config.attributes["url"]. The
alembic command line takes `-x url=...`, else DATABASE_URL, else the embedded
default (instance/tasks.db). SQLite migrations run in batch mode (SQLite
cannot ALTER most things in place); on PostgreSQL an advisory lock lets only
one process migrate at a time, so servers started together do not race.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine, pool
from sqlalchemy.engine import Connection

from tasknotify.store import store as db

MIGRATION_LOCK = 0x6D696772  # "migr": the advisory lock key of a migration run (PostgreSQL)

config = context.config
target_metadata = db.Base.metadata


def database_url() -> str:
    url = config.attributes.get("url") or context.get_x_argument(as_dictionary=True).get("url")
    url = url or os.environ.get("DATABASE_URL") or db.default_url(os.environ.get("INSTANCE_PATH") or "instance")
    return db.normalize_url(url)


def configure(**options: object) -> None:
    context.configure(target_metadata=target_metadata, compare_type=True, **options)  # type: ignore[arg-type]


def run_offline() -> None:
    """`alembic upgrade head --sql`: print the SQL instead of running it."""
    url = database_url()
    configure(url=url, literal_binds=True, render_as_batch=url.startswith("sqlite"))
    with context.begin_transaction():
        context.run_migrations()


def run_online(connection: Connection) -> None:
    configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Held until the migration transaction ends; a second process then finds the work done.
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
elif (given := config.attributes.get("connection")) is not None:
    run_online(given)
else:
    url = database_url()
    connect_args = {"timeout": 30} if url.startswith("sqlite") else {}
    engine = create_engine(url, poolclass=pool.NullPool, connect_args=connect_args)
    try:
        with engine.connect() as connection:
            run_online(connection)
    finally:
        engine.dispose()
