"""recall: full text of the content only (speaker names no longer indexed), embedding claims, re-embed

Names were indexed with every message, so a question naming a speaker matched most of a chat. Messages
were embedded as "[date] Name: text", which pulled the other speaker's turns; they are embedded as
their text now, so every message is queued again (its old vectors serve until the worker replaces them).
The wider scopes measure IDF on a user's newest messages: (user_id, id) finds them.
`embed_claimed_at` lets the embedding worker claim rows, commit, and embed without holding row locks.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 06:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _search(expression: str) -> None:
    op.drop_index("ix_message_search", table_name="message")
    op.drop_column("message", "search")
    op.add_column(
        "message",
        sa.Column(
            "search",
            postgresql.TSVECTOR(),
            sa.Computed(expression, persisted=True),
            nullable=True,
        ),
    )
    op.create_index("ix_message_search", "message", ["search"], unique=False, postgresql_using="gin")


def upgrade() -> None:
    _search("to_tsvector('english', content)")
    op.add_column("message", sa.Column("embed_claimed_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_message_user_newest", "message", ["user_id", "id"], unique=False)  # IDF sample
    op.execute("UPDATE message SET embedded = false WHERE embedded")


def downgrade() -> None:
    op.drop_index("ix_message_user_newest", table_name="message")
    op.drop_column("message", "embed_claimed_at")
    _search("to_tsvector('english', coalesce(name, '') || ' ' || content)")
