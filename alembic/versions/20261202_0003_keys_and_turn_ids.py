"""key management (prefix, revoked, per-key limits) and idempotent turn ids

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 00:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("app_user", sa.Column("key_prefix", sa.String(length=16), nullable=True))
    op.add_column(
        "app_user", sa.Column("revoked", sa.Boolean(), server_default=sa.text("false"), nullable=False)
    )
    op.add_column("app_user", sa.Column("requests_per_minute", sa.Integer(), nullable=True))
    op.add_column("app_user", sa.Column("tokens_per_minute", sa.Integer(), nullable=True))
    op.add_column("turn_context", sa.Column("turn_id", sa.String(length=36), nullable=True))
    op.create_unique_constraint(op.f("uq_turn_context_turn_id"), "turn_context", ["turn_id"])


def downgrade() -> None:
    op.drop_constraint(op.f("uq_turn_context_turn_id"), "turn_context", type_="unique")
    op.drop_column("turn_context", "turn_id")
    op.drop_column("app_user", "tokens_per_minute")
    op.drop_column("app_user", "requests_per_minute")
    op.drop_column("app_user", "revoked")
    op.drop_column("app_user", "key_prefix")
