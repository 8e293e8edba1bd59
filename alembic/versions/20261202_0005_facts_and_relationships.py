"""facts about the user (versioned, with source messages) and relationships per user x persona

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 07:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A fact whose last source message is deleted goes with it (facts stated through the API have no
# sources and never get here); the version it had superseded becomes current again.
FORGET_UNSUPPORTED = """
CREATE FUNCTION fact_source_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM fact_source WHERE fact_id = OLD.fact_id) THEN
        UPDATE fact SET valid_to = NULL, superseded_by = NULL WHERE superseded_by = OLD.fact_id
            AND EXISTS (SELECT 1 FROM fact f WHERE f.id = OLD.fact_id AND f.valid_to IS NULL);
        DELETE FROM fact WHERE id = OLD.fact_id;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER fact_source_deleted AFTER DELETE ON fact_source
    FOR EACH ROW EXECUTE FUNCTION fact_source_deleted();
"""


def _owner() -> sa.Column[int]:
    return sa.Column("user_id", sa.BigInteger(), nullable=False)


def upgrade() -> None:
    # existing messages count as read (no surprise backfill of old history); new ones are pending
    op.add_column(
        "message", sa.Column("facts_done", sa.Boolean(), server_default=sa.text("true"), nullable=False)
    )
    op.alter_column("message", "facts_done", server_default=sa.text("false"))
    op.create_index(
        "ix_message_facts_pending",
        "message",
        ["conversation_id", "id"],
        postgresql_where=sa.text("NOT facts_done"),
    )
    op.create_table(
        "fact",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        _owner(),
        sa.Column("end_user", sa.String(length=200), server_default="", nullable=False),
        sa.Column("persona_id", sa.BigInteger(), nullable=True),
        sa.Column("conversation_id", sa.BigInteger(), nullable=True),
        sa.Column("subject", sa.String(length=16), nullable=False),
        sa.Column("subject_name", sa.String(length=200), nullable=True),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("attribute", sa.String(length=200), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("statement", sa.Text(), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("origin", sa.String(length=16), nullable=False),
        sa.Column("valid_from", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("valid_to", sa.DateTime(timezone=True), nullable=True),
        sa.Column("superseded_by", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["app_user.id"], name=op.f("fk_fact_user_id_app_user"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["persona_id"], ["persona.id"], name=op.f("fk_fact_persona_id_persona"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversation.id"],
            name=op.f("fk_fact_conversation_id_conversation"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["superseded_by"], ["fact.id"], name=op.f("fk_fact_superseded_by_fact"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fact")),
    )
    op.create_index(op.f("ix_fact_user_id"), "fact", ["user_id"])
    op.create_index(op.f("ix_fact_persona_id"), "fact", ["persona_id"])
    op.create_index(op.f("ix_fact_conversation_id"), "fact", ["conversation_id"])
    op.create_index(op.f("ix_fact_superseded_by"), "fact", ["superseded_by"])
    op.create_index(
        "ix_fact_current",
        "fact",
        ["user_id", "end_user", "subject", "attribute"],
        postgresql_where=sa.text("valid_to IS NULL"),
    )
    op.create_table(
        "fact_source",
        sa.Column("fact_id", sa.BigInteger(), nullable=False),
        sa.Column("message_id", sa.BigInteger(), nullable=False),
        _owner(),
        sa.ForeignKeyConstraint(
            ["fact_id"], ["fact.id"], name=op.f("fk_fact_source_fact_id_fact"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["message_id"], ["message.id"], name=op.f("fk_fact_source_message_id_message"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["app_user.id"], name=op.f("fk_fact_source_user_id_app_user"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("fact_id", "message_id", name=op.f("pk_fact_source")),
    )
    op.create_index(op.f("ix_fact_source_message_id"), "fact_source", ["message_id"])
    op.create_index(op.f("ix_fact_source_user_id"), "fact_source", ["user_id"])
    op.execute(FORGET_UNSUPPORTED)
    op.create_table(
        "relationship",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        _owner(),
        sa.Column("end_user", sa.String(length=200), server_default="", nullable=False),
        sa.Column("persona_id", sa.BigInteger(), nullable=False),
        sa.Column("stage", sa.String(length=64), nullable=True),
        sa.Column("score", sa.Float(), server_default="0", nullable=False),
        sa.Column("interactions", sa.Integer(), server_default="0", nullable=False),
        sa.Column("first_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["app_user.id"], name=op.f("fk_relationship_user_id_app_user"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["persona_id"],
            ["persona.id"],
            name=op.f("fk_relationship_persona_id_persona"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_relationship")),
        sa.UniqueConstraint("user_id", "end_user", "persona_id", name=op.f("uq_relationship_user_id")),
    )
    op.create_index(op.f("ix_relationship_user_id"), "relationship", ["user_id"])
    op.create_index(op.f("ix_relationship_persona_id"), "relationship", ["persona_id"])


def downgrade() -> None:
    op.drop_table("relationship")
    op.execute("DROP TRIGGER IF EXISTS fact_source_deleted ON fact_source")
    op.drop_table("fact_source")
    op.execute("DROP FUNCTION IF EXISTS fact_source_deleted()")
    op.drop_table("fact")
    op.drop_index("ix_message_facts_pending", table_name="message")
    op.drop_column("message", "facts_done")
