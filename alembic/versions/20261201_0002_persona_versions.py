"""persona versions and card chunks

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 00:30:00
"""

from collections.abc import Sequence

import pgvector.sqlalchemy
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.alter_column("persona", "user_id", existing_type=sa.BigInteger(), nullable=True)
    op.add_column("persona", sa.Column("source", sa.String(length=16), server_default="api", nullable=False))
    op.add_column("persona", sa.Column("version", sa.Integer(), server_default="0", nullable=False))
    op.add_column(
        "persona",
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
    )
    op.create_index(
        "uq_persona_shared_name",
        "persona",
        ["name"],
        unique=True,
        postgresql_where=sa.text("user_id IS NULL"),
    )
    op.add_column(
        "turn_context", sa.Column("persona", postgresql.JSONB(astext_type=sa.Text()), nullable=True)
    )
    op.create_table(
        "persona_version",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("persona_id", sa.BigInteger(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("content_hash", sa.String(length=32), nullable=False),
        sa.Column("spec", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("note", sa.String(length=500), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["persona_id"],
            ["persona.id"],
            name=op.f("fk_persona_version_persona_id_persona"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_persona_version")),
        sa.UniqueConstraint("persona_id", "version", name=op.f("uq_persona_version_persona_id")),
    )
    op.create_table(
        "persona_chunk",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("persona_id", sa.BigInteger(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("card_hash", sa.String(length=32), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("token_count", sa.Integer(), nullable=False),
        sa.Column("embedding", pgvector.sqlalchemy.Vector(dim=384), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["persona_id"],
            ["persona.id"],
            name=op.f("fk_persona_chunk_persona_id_persona"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["app_user.id"], name=op.f("fk_persona_chunk_user_id_app_user"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_persona_chunk")),
        sa.UniqueConstraint("persona_id", "card_hash", "position", name=op.f("uq_persona_chunk_persona_id")),
    )
    op.create_index(op.f("ix_persona_chunk_persona_id"), "persona_chunk", ["persona_id"], unique=False)
    op.create_index(op.f("ix_persona_chunk_user_id"), "persona_chunk", ["user_id"], unique=False)


def downgrade() -> None:
    op.drop_table("persona_chunk")
    op.drop_table("persona_version")
    op.drop_column("turn_context", "persona")
    op.drop_index("uq_persona_shared_name", table_name="persona")
    op.execute("DELETE FROM persona WHERE user_id IS NULL")
    op.drop_column("persona", "updated_at")
    op.drop_column("persona", "version")
    op.drop_column("persona", "source")
    op.alter_column("persona", "user_id", existing_type=sa.BigInteger(), nullable=False)
