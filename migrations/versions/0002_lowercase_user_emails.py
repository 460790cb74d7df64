"""Stored email addresses in canonical form: lowercased as a whole.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 03:00:00

The service compares addresses case-insensitively by storing them lowercased
(schemas.canonical_email). Rows written before kept the case their client
sent in the local part (`Alice@example.com`), which the new rule would never
find: this lowercases every stored copy of a user's address, namely
tasks.user_email, events.user_email and the task in the event's payload,
notifications.user_email and the recipient of email notifications not yet
sent, and idempotency_keys.owner (a key that then collides with the same
user's key of the same name is dropped: both are that user's now).

Addresses are lowercased in Python, as the service does: SQLite's lower()
folds ASCII letters only. Offline (`--sql`) there are no rows to read, so the
script falls back to the database's lower(). There is no way back: the
original case is not kept, and the downgrade leaves the rows as they are.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (table, column) holding a user's address
COLUMNS = (("tasks", "user_email"), ("events", "user_email"), ("notifications", "user_email"),
           ("idempotency_keys", "owner"))


def _offline() -> None:
    for table, column in COLUMNS:
        op.execute(f"UPDATE {table} SET {column} = lower({column}) WHERE {column} <> lower({column})")
    op.execute("UPDATE notifications SET recipient = lower(recipient) "
               "WHERE channel = 'email' AND status <> 'sent' AND recipient <> lower(recipient)")


def _mixed_case(connection: sa.Connection) -> dict[str, str]:
    """Every stored address that is not lowercase, with its lowercase form."""
    found: set[str] = set()
    for table, column in COLUMNS:
        found.update(connection.execute(sa.text(f"SELECT DISTINCT {column} FROM {table}")).scalars())
    return {address: address.lower() for address in found if address != address.lower()}


def _lowercase(connection: sa.Connection, old: str, new: str) -> None:
    params = {"old": old, "new": new}
    connection.execute(sa.text("UPDATE tasks SET user_email = :new WHERE user_email = :old"), params)
    connection.execute(sa.text("UPDATE notifications SET recipient = :new "
                               "WHERE recipient = :old AND channel = 'email' AND status <> 'sent'"), params)
    connection.execute(sa.text("UPDATE notifications SET user_email = :new WHERE user_email = :old"), params)
    connection.execute(sa.text("DELETE FROM idempotency_keys WHERE owner = :old AND \"key\" IN "
                               "(SELECT \"key\" FROM idempotency_keys WHERE owner = :new)"), params)
    connection.execute(sa.text("UPDATE idempotency_keys SET owner = :new WHERE owner = :old"), params)
    events = connection.execute(sa.text("SELECT id, payload FROM events WHERE user_email = :old"), params).all()
    for event_id, payload in events:
        connection.execute(sa.text("UPDATE events SET user_email = :new, payload = :payload WHERE id = :id"),
                           {"new": new, "payload": _payload_with(payload, new), "id": event_id})


def _payload_with(payload: str, user_email: str) -> str:
    """The event's wire payload with the task's user_email replaced, encoded as the service encodes it."""
    event = json.loads(payload)
    event["task"]["user_email"] = user_email
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)


def upgrade() -> None:
    if op.get_context().as_sql:
        _offline()
        return
    connection = op.get_bind()
    for old, new in sorted(_mixed_case(connection).items()):
        _lowercase(connection, old, new)


def downgrade() -> None:
    pass  # the original case is gone; lowercase addresses are valid at the previous revision too
