"""Alembic migrations: an empty database upgraded to head has the schema of the models (SQLite, PostgreSQL)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, pool, text
from sqlalchemy.engine import Engine, make_url

import db
from support import ROOT, require_service
from tasknotify.store import migrate

POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
TABLES = {"tasks", "events", "notifications", "idempotency_keys", "preferences"}


@pytest.fixture(params=["sqlite", "postgresql"])
def new_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], str]]:
    """A factory of empty databases of the parametrized kind; PostgreSQL ones are dropped afterwards."""
    if request.param == "sqlite":
        count = iter(range(1000))
        yield lambda: f"sqlite:///{tmp_path / f'db{next(count)}.db'}"
        return
    server = make_url(db.normalize_url(POSTGRES_URL))
    require_service(server.host or "127.0.0.1", server.port or 5432, "PostgreSQL")
    admin = create_engine(server, isolation_level="AUTOCOMMIT", poolclass=pool.NullPool)
    names: list[str] = []

    def create() -> str:
        name = f"t_{uuid.uuid4().hex[:16]}"
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        names.append(name)
        return server.set(database=name).render_as_string(hide_password=False)

    yield create
    with admin.connect() as conn:
        for name in names:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


def engine_for(url: str) -> Engine:
    return create_engine(db.normalize_url(url), poolclass=pool.NullPool)


def snapshot(url: str) -> dict[str, Any]:
    """What the database says its schema is: per table its columns, keys, indexes and unique constraints."""
    engine = engine_for(url)
    try:
        found = inspect(engine)
        tables = {}
        for table in sorted(set(found.get_table_names()) - {"alembic_version"}):
            tables[table] = {
                "columns": [(c["name"], str(c["type"]), c["nullable"]) for c in found.get_columns(table)],
                "primary_key": found.get_pk_constraint(table)["constrained_columns"],
                "foreign_keys": sorted((tuple(fk["constrained_columns"]), fk["referred_table"],
                                        tuple(fk["referred_columns"])) for fk in found.get_foreign_keys(table)),
                "indexes": sorted((ix["name"], tuple(ix["column_names"]), bool(ix["unique"]))
                                  for ix in found.get_indexes(table)),
                "unique": sorted(tuple(uc["column_names"]) for uc in found.get_unique_constraints(table)),
            }
        return tables
    finally:
        engine.dispose()


def model_differences(url: str) -> list[Any]:
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
            return compare_metadata(context, db.Base.metadata)
    finally:
        engine.dispose()


def test_upgrading_an_empty_database_gives_the_schema_of_the_models(new_database: Callable[[], str]) -> None:
    migrated, created = new_database(), new_database()
    migrate.upgrade(migrated)
    assert migrate.current_revision(migrated) == migrate.head_revision() is not None

    assert model_differences(migrated) == []
    # The same, told by the database itself: names of tables, columns and indexes, types, keys,
    # compared with what the models create directly.
    engine = engine_for(created)
    db.Base.metadata.create_all(engine)
    engine.dispose()
    schema = snapshot(migrated)
    assert set(schema) == TABLES
    assert schema == snapshot(created)
    for table in db.Base.metadata.sorted_tables:
        assert [c[0] for c in schema[table.name]["columns"]] == [c.name for c in table.columns]
        named = {ix[0] for ix in schema[table.name]["indexes"]}
        assert {ix.name for ix in table.indexes} <= named
    assert ("owner", "key") in schema["idempotency_keys"]["unique"]
    assert ("task_id",) in schema["tasks"]["unique"]


def test_events_never_reuse_an_id_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tasks.db'}"
    migrate.upgrade(url)
    engine = engine_for(url)
    with engine.begin() as conn:
        sql = conn.execute(text("SELECT sql FROM sqlite_master WHERE name = 'events'")).scalar_one()
        assert "AUTOINCREMENT" in sql
        insert = text("INSERT INTO events (type, task_id, user_email, occurred_at, payload) "
                      "VALUES ('task.created', 't', 'a@example.com', '2026-01-01', '{}')")
        conn.execute(insert)
        conn.execute(insert)
        conn.execute(text("DELETE FROM events WHERE id = 2"))
        conn.execute(insert)
        assert conn.execute(text("SELECT max(id) FROM events")).scalar_one() == 3
    engine.dispose()


def test_upgrading_twice_changes_nothing(new_database: Callable[[], str]) -> None:
    url = new_database()
    migrate.upgrade(url)
    before = snapshot(url)
    store = db.Store(url)
    store.change_task("t1", {"user_email": "a@example.com"}, mode="upsert", outbox=db.Outbox((("log", None),)),
                      after_commit=lambda event: None)
    store.dispose()

    migrate.upgrade(url)

    assert snapshot(url) == before
    assert migrate.current_revision(url) == migrate.head_revision()
    engine = engine_for(url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM events")).scalar_one() == 1
        assert conn.execute(text("SELECT count(*) FROM notifications")).scalar_one() == 1
    engine.dispose()


def test_a_database_made_by_create_all_is_adopted(new_database: Callable[[], str]) -> None:
    """The embedded default creates its tables on start; upgrading such a database records it, keeping its rows."""
    url = new_database()
    store = db.Store(url)
    store.create_schema()
    store.change_task("t1", {"user_email": "a@example.com"}, mode="upsert", outbox=db.Outbox((("log", None),)),
                      after_commit=lambda event: None)
    store.dispose()
    assert migrate.current_revision(url) is None

    migrate.upgrade(url)

    assert migrate.current_revision(url) == migrate.head_revision()
    assert model_differences(url) == []
    engine = engine_for(url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT task_id FROM tasks")).scalars().all() == ["t1"]
    engine.dispose()


def test_downgrade_to_base_removes_the_tables(new_database: Callable[[], str]) -> None:
    from alembic import command

    url = new_database()
    migrate.upgrade(url)
    command.downgrade(migrate.alembic_config(url), "base")
    assert snapshot(url) == {}
    assert migrate.current_revision(url) is None


def test_flask_db_upgrade_command_creates_the_tables(new_database: Callable[[], str], tmp_path: Path) -> None:
    url = new_database()
    env = {**os.environ, "INSTANCE_PATH": str(tmp_path / "instance"), "DATABASE_URL": url, "NOTIFY_WORKERS": "0"}
    env.pop("REDIS_URL", None)
    flask = Path(sys.executable).with_name("flask")
    result = subprocess.run([str(flask), "--app", "app", "db", "upgrade"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    if "No such command 'db'" in result.stderr:
        pytest.fail("app.py does not register the command yet: app.cli.add_command(migrate.db_cli)")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"database at revision {migrate.head_revision()}" in result.stdout
    assert migrate.current_revision(url) == migrate.head_revision()
    assert set(snapshot(url)) == TABLES
    assert model_differences(url) == []


def test_old_mixed_case_addresses_are_lowercased(new_database: Callable[[], str]) -> None:
    """Rows written before addresses were stored in canonical form are found by the canonical form afterwards."""
    url = new_database()
    migrate.upgrade(url, "0001")
    store = db.Store(url)
    outbox = db.Outbox((("email", None), ("log", "log")))
    for task_id, address, key in (("t1", "Alice@Example.com", "k1"), ("t2", "alice@example.com", "k1"),
                                  ("t3", "JÖRG@bücher.de", "k2"), ("t4", "bob@example.com", "k3")):
        store.change_task(task_id, {"user_email": address}, mode="upsert", outbox=outbox,
                          after_commit=lambda event: None,
                          idempotency=db.Idempotency(owner=address, key=key, fingerprint=task_id))
    store.change_task("t1", {"title": "again"}, mode="upsert", outbox=outbox, after_commit=lambda event: None)
    engine = engine_for(url)
    with engine.begin() as conn:  # one email already sent to the address as it was then
        conn.execute(text("UPDATE notifications SET status = 'sent' WHERE id = 1"))

    migrate.upgrade(url)

    expected = {"t1": "alice@example.com", "t2": "alice@example.com", "t3": "jörg@bücher.de",
                "t4": "bob@example.com"}
    with engine.connect() as conn:
        assert dict(conn.execute(text("SELECT task_id, user_email FROM tasks")).all()) == expected
        events = conn.execute(text("SELECT task_id, user_email, payload FROM events ORDER BY id")).all()
        assert len(events) == 5
        for task_id, user_email, payload in events:
            assert user_email == json.loads(payload)["task"]["user_email"] == expected[task_id]
        notes = conn.execute(text("SELECT id, task_id, user_email, channel, recipient FROM notifications")).all()
        assert {(n.task_id, n.user_email) for n in notes} == set(expected.items())
        recipients = {n.id: n.recipient for n in notes if n.channel == "email"}
        assert recipients == {1: "Alice@Example.com", 3: "alice@example.com", 5: "jörg@bücher.de",
                              7: "bob@example.com", 9: "alice@example.com"}
        assert {n.recipient for n in notes if n.channel == "log"} == {"log"}
        keys = conn.execute(text('SELECT owner, "key" FROM idempotency_keys ORDER BY owner, "key"')).all()
        assert [tuple(k) for k in keys] == [("alice@example.com", "k1"), ("bob@example.com", "k3"),
                                            ("jörg@bücher.de", "k2")]
    engine.dispose()
    tasks, _ = store.list_tasks(user_email="alice@example.com", status=None, limit=10, after_row=0)
    assert [t["task_id"] for t in tasks] == ["t1", "t2"]
    assert [e.task_id for e in store.events_after(0, user_email="alice@example.com")] == ["t1", "t2", "t1"]
    store.dispose()


def test_head_is_the_newest_migration() -> None:
    """migrate.HEAD, which lets a start skip Alembic, names the newest script in migrations/."""
    assert migrate.HEAD == migrate.head_revision()


def test_a_start_on_a_database_at_head_does_without_alembic(new_database: Callable[[], str], tmp_path: Path) -> None:
    """The first start creates the schema with Alembic; the next ones read its version and leave Alembic unloaded."""
    url = new_database()
    env = {**os.environ, "INSTANCE_PATH": str(tmp_path / "instance"), "DATABASE_URL": url, "NOTIFY_WORKERS": "0"}
    env.pop("REDIS_URL", None)
    probe = "import sys, app; app.create_app(); print('alembic' in sys.modules)"

    def start() -> str:
        result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    assert start() == "True"  # a new database: migrated
    assert migrate.current_revision(url) == migrate.HEAD
    assert start() == "False"
    assert set(snapshot(url)) == TABLES
