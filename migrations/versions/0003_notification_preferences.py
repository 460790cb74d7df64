"""Notification preferences and digests: the preferences table, digest rows and notification reasons.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 04:00:00

- preferences: one row per user who set preferences (a JSON document);
  users without one have the defaults of the settings.
- notifications.kind: "event" (every row so far) or "digest", a row that
  folds a user's held emails into one; a digest has no event_id or task_id,
  so both become nullable.
- notifications.reason (why a row is suppressed or held) and
  notifications.digest_id (the digest a held row waits for).
- The index on notifications.user_email becomes (user_email, kind, status),
  which also finds a user's open digest.

On SQLite the notifications table is rebuilt (batch mode): its rows are
copied once. A database made by create_all from the models of this revision
already has all of it and is left as it is (as 0001 does). The downgrade
deletes digest rows and the reasons with them.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Offline (--sql), there is no database to look at: emit everything.
    inspector = None if op.get_context().as_sql else sa.inspect(op.get_bind())
    if inspector is None or "preferences" not in inspector.get_table_names():
        _preferences()
    if inspector is None or "kind" not in {c["name"] for c in inspector.get_columns("notifications")}:
        _notifications()


def _preferences() -> None:
    op.create_table(
        "preferences",
        sa.Column("user_email", sa.String(length=320), nullable=False),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("user_email"),
    )


def _notifications() -> None:
    with op.batch_alter_table("notifications") as batch:
        batch.alter_column("event_id", existing_type=sa.Integer(), nullable=True)
        batch.alter_column("task_id", existing_type=sa.String(length=64), nullable=True)
        batch.add_column(sa.Column("kind", sa.String(length=16), server_default="event", nullable=False))
        batch.add_column(sa.Column("reason", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("digest_id", sa.Integer(), nullable=True))
        batch.create_foreign_key("fk_notifications_digest_id", "notifications", ["digest_id"], ["id"])
        batch.create_index("ix_notifications_digest_id", ["digest_id"], unique=False)
        batch.drop_index("ix_notifications_user_email")
        batch.create_index("ix_notifications_user_kind_status", ["user_email", "kind", "status"], unique=False)


def downgrade() -> None:
    op.execute("UPDATE notifications SET digest_id = NULL")
    op.execute("DELETE FROM notifications WHERE kind = 'digest'")
    with op.batch_alter_table("notifications") as batch:
        batch.drop_index("ix_notifications_user_kind_status")
        batch.create_index("ix_notifications_user_email", ["user_email"], unique=False)
        batch.drop_index("ix_notifications_digest_id")
        batch.drop_constraint("fk_notifications_digest_id", type_="foreignkey")
        batch.drop_column("digest_id")
        batch.drop_column("reason")
        batch.drop_column("kind")
        batch.alter_column("task_id", existing_type=sa.String(length=64), nullable=False)
        batch.alter_column("event_id", existing_type=sa.Integer(), nullable=False)
    op.drop_table("preferences")
