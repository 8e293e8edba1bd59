"""The whole schema on one MetaData, for Alembic's autogenerate and the schema test: the table modules
register their tables on `Base.metadata` when imported, and a process that stores chats need not import
them all, so what compares against the migrations imports this."""

from __future__ import annotations

from sqlalchemy import MetaData

from memory import fact_models, persona_models  # noqa: F401  (imported for the tables they register)
from memory.models import Base

metadata: MetaData = Base.metadata
