"""Database migrations (Alembic): `upgrade(url)` and the `flask --app app db upgrade` command.

The migration scripts live in migrations/; their target is db.Base.metadata.
A new migration is written with the alembic command line (see alembic.ini),
and HEAD below set to its revision (tests/test_migrations.py checks it):

    .venv/bin/alembic -x url=sqlite:///instance/tasks.db revision --autogenerate -m "what changes"

Alembic is imported only when a database needs it: a start on a database already
at HEAD does without it (its import is a sixth of the service's).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import click
from flask import current_app
from flask.cli import AppGroup
from sqlalchemy import create_engine, exc, pool, text

from tasknotify.config import ROOT
from tasknotify.store.store import Store, normalize_url

if TYPE_CHECKING:
    from alembic.config import Config

logger = logging.getLogger("migrate")

MIGRATIONS = ROOT / "migrations"
HEAD = "0003"  # the newest migration's revision


def upgrade_on_start(store: Store) -> None:
    """The schema created or brought up to HEAD; a database already there is only read, without Alembic."""
    try:
        with store.engine.connect() as connection:
            versions = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    except exc.DBAPIError:  # no version table: a new database
        versions = []
    if versions != [HEAD]:
        upgrade(store.url)


def alembic_config(url: str) -> Config:
    """An Alembic configuration for the database at url, without alembic.ini."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # Given as an attribute, not an option: options go through ConfigParser, which mangles '%' in passwords.
    config.attributes["url"] = normalize_url(url)
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at url up to revision (default: the newest); a database already there is left alone."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def head_revision() -> str | None:
    """The newest migration's revision id, as Alembic reads it from migrations/."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def current_revision(url: str) -> str | None:
    """The revision the database at url is at, or None when it has never been migrated."""
    from alembic.runtime.migration import MigrationContext

    engine = create_engine(normalize_url(url), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


db_cli = AppGroup("db", help="Manage the database schema (Alembic migrations).")


@db_cli.command("upgrade")
@click.argument("revision", default="head")
def upgrade_command(revision: str) -> None:
    """Upgrade the app's database (DATABASE_URL) to REVISION, by default the newest."""
    url = current_app.extensions["store"].url
    upgrade(url, revision)
    click.echo(f"database at revision {current_revision(url)}")


@db_cli.command("current")
def current_command() -> None:
    """Print the revision the app's database is at (nothing when it has never been migrated)."""
    click.echo(current_revision(current_app.extensions["store"].url) or "")
