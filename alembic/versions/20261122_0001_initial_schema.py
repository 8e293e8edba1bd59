"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-22 19:43:51.876987
"""

from collections.abc import Sequence

import pgvector.sqlalchemy
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.create_table(
        "app_user",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=True),
        sa.Column("is_admin", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_app_user")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_app_user_key_hash")),
    )
    op.create_table(
        "persona",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["app_user.id"], name=op.f("fk_persona_user_id_app_user"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_persona")),
        sa.UniqueConstraint("user_id", "name", name=op.f("uq_persona_user_id")),
    )
    op.create_index(op.f("ix_persona_user_id"), "persona", ["user_id"], unique=False)
    op.create_table(
        "conversation",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("public_id", sa.String(length=200), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("end_user", sa.String(length=200), server_default="", nullable=False),
        sa.Column("persona_id", sa.BigInteger(), nullable=True),
        sa.Column("character", sa.String(length=200), nullable=True),
        sa.Column("title", sa.String(length=500), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["persona_id"],
            ["persona.id"],
            name=op.f("fk_conversation_persona_id_persona"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["app_user.id"], name=op.f("fk_conversation_user_id_app_user"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_conversation")),
        sa.UniqueConstraint("user_id", "public_id", name=op.f("uq_conversation_user_id")),
    )
    op.create_index(
        "ix_conversation_scope", "conversation", ["user_id", "end_user", "updated_at"], unique=False
    )
    op.create_index(op.f("ix_conversation_user_id"), "conversation", ["user_id"], unique=False)
    op.create_table(
        "message",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("conversation_id", sa.BigInteger(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("parent_id", sa.BigInteger(), nullable=True),
        sa.Column("depth", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("content_hash", sa.String(length=32), nullable=False),
        sa.Column("token_count", sa.Integer(), nullable=False),
        sa.Column("emotion_label", sa.String(length=32), nullable=True),
        sa.Column("emotion_confidence", sa.Float(), nullable=True),
        sa.Column("emotion_scores", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("importance", sa.Float(), nullable=True),
        sa.Column("source", sa.String(length=16), server_default="chat", nullable=False),
        sa.Column("status", sa.String(length=16), server_default="complete", nullable=False),
        sa.Column("metadata", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("embedded", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column(
            "search",
            postgresql.TSVECTOR(),
            sa.Computed("to_tsvector('english', coalesce(name, '') || ' ' || content)", persisted=True),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversation.id"],
            name=op.f("fk_message_conversation_id_conversation"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"], ["message.id"], name=op.f("fk_message_parent_id_message"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["app_user.id"], name=op.f("fk_message_user_id_app_user"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_message")),
    )
    op.create_index("ix_message_conversation", "message", ["conversation_id", "id"], unique=False)
    op.create_index(op.f("ix_message_parent_id"), "message", ["parent_id"], unique=False)
    op.create_index("ix_message_search", "message", ["search"], unique=False, postgresql_using="gin")
    op.create_index(
        "ix_message_unembedded", "message", ["id"], unique=False, postgresql_where=sa.text("NOT embedded")
    )
    op.create_index("ix_message_user_hash", "message", ["user_id", "content_hash"], unique=False)
    op.create_index(op.f("ix_message_user_id"), "message", ["user_id"], unique=False)
    op.create_table(
        "message_embedding",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("message_id", sa.BigInteger(), nullable=False),
        sa.Column("conversation_id", sa.BigInteger(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("chunk", sa.Integer(), server_default="0", nullable=False),
        sa.Column("embedding", pgvector.sqlalchemy.vector.VECTOR(dim=384), nullable=False),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversation.id"],
            name=op.f("fk_message_embedding_conversation_id_conversation"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["message.id"],
            name=op.f("fk_message_embedding_message_id_message"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["app_user.id"],
            name=op.f("fk_message_embedding_user_id_app_user"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_message_embedding")),
    )
    op.create_index(
        op.f("ix_message_embedding_conversation_id"), "message_embedding", ["conversation_id"], unique=False
    )
    op.create_index(
        "ix_message_embedding_hnsw",
        "message_embedding",
        ["embedding"],
        unique=False,
        postgresql_using="hnsw",
        postgresql_ops={"embedding": "vector_cosine_ops"},
    )
    op.create_index(
        op.f("ix_message_embedding_message_id"), "message_embedding", ["message_id"], unique=False
    )
    op.create_index(op.f("ix_message_embedding_user_id"), "message_embedding", ["user_id"], unique=False)
    op.create_table(
        "summary",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("conversation_id", sa.BigInteger(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("first_message_id", sa.BigInteger(), nullable=False),
        sa.Column("last_message_id", sa.BigInteger(), nullable=False),
        sa.Column("message_count", sa.Integer(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("token_count", sa.Integer(), nullable=False),
        sa.Column("embedding", pgvector.sqlalchemy.vector.VECTOR(dim=384), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversation.id"],
            name=op.f("fk_summary_conversation_id_conversation"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["first_message_id"],
            ["message.id"],
            name=op.f("fk_summary_first_message_id_message"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["last_message_id"],
            ["message.id"],
            name=op.f("fk_summary_last_message_id_message"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["app_user.id"], name=op.f("fk_summary_user_id_app_user"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_summary")),
    )
    op.create_index(op.f("ix_summary_conversation_id"), "summary", ["conversation_id"], unique=False)
    op.create_index(op.f("ix_summary_last_message_id"), "summary", ["last_message_id"], unique=False)
    op.create_index(op.f("ix_summary_user_id"), "summary", ["user_id"], unique=False)
    op.create_table(
        "turn_context",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("conversation_id", sa.BigInteger(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("reply_message_id", sa.BigInteger(), nullable=True),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("messages", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("tokens", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversation.id"],
            name=op.f("fk_turn_context_conversation_id_conversation"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["reply_message_id"],
            ["message.id"],
            name=op.f("fk_turn_context_reply_message_id_message"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["app_user.id"], name=op.f("fk_turn_context_user_id_app_user"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_turn_context")),
    )
    op.create_index(
        op.f("ix_turn_context_conversation_id"), "turn_context", ["conversation_id"], unique=False
    )
    op.create_index(op.f("ix_turn_context_user_id"), "turn_context", ["user_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_turn_context_user_id"), table_name="turn_context")
    op.drop_index(op.f("ix_turn_context_conversation_id"), table_name="turn_context")
    op.drop_table("turn_context")
    op.drop_index(op.f("ix_summary_user_id"), table_name="summary")
    op.drop_index(op.f("ix_summary_last_message_id"), table_name="summary")
    op.drop_index(op.f("ix_summary_conversation_id"), table_name="summary")
    op.drop_table("summary")
    op.drop_index(op.f("ix_message_embedding_user_id"), table_name="message_embedding")
    op.drop_index(op.f("ix_message_embedding_message_id"), table_name="message_embedding")
    op.drop_index(
        "ix_message_embedding_hnsw",
        table_name="message_embedding",
        postgresql_using="hnsw",
        postgresql_ops={"embedding": "vector_cosine_ops"},
    )
    op.drop_index(op.f("ix_message_embedding_conversation_id"), table_name="message_embedding")
    op.drop_table("message_embedding")
    op.drop_index(op.f("ix_message_user_id"), table_name="message")
    op.drop_index("ix_message_user_hash", table_name="message")
    op.drop_index("ix_message_unembedded", table_name="message", postgresql_where=sa.text("NOT embedded"))
    op.drop_index("ix_message_search", table_name="message", postgresql_using="gin")
    op.drop_index(op.f("ix_message_parent_id"), table_name="message")
    op.drop_index("ix_message_conversation", table_name="message")
    op.drop_table("message")
    op.drop_index(op.f("ix_conversation_user_id"), table_name="conversation")
    op.drop_index("ix_conversation_scope", table_name="conversation")
    op.drop_table("conversation")
    op.drop_index(op.f("ix_persona_user_id"), table_name="persona")
    op.drop_table("persona")
    op.drop_table("app_user")
