"""message hashes that ignore presentation (name field, "Name: " prefix, whitespace)

Recognition matches a client's copy of a stored message by `content_hash`; the hash no longer
includes the `name` field and leaves out a leading "Name: " prefix and all whitespace, so the same
turn shown with another SillyTavern name setting is recognised instead of stored again. Existing rows
are re-hashed in batches.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 07:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op
from memory.threads import content_hash
from memory.types import Message

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 5000


def upgrade() -> None:
    connection = op.get_bind()
    last = 0
    while True:
        rows = connection.execute(
            sa.text("SELECT id, role, content FROM message WHERE id > :last ORDER BY id LIMIT :n"),
            {"last": last, "n": BATCH},
        ).all()
        if not rows:
            break
        connection.execute(
            sa.text("UPDATE message SET content_hash = :hash WHERE id = :id"),
            [{"id": r.id, "hash": content_hash(Message(r.role, r.content))} for r in rows],
        )
        last = rows[-1].id


def downgrade() -> None:
    """The old hashes cannot be told apart from the new ones by a reader; nothing to undo."""
