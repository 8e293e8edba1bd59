"""Who is asking and about which conversation: from headers and the body, before memory looks.

Precedence for an explicit conversation id: the `X-Anima-Conversation` header, then the body's
`metadata.conversation_id`. The OpenAI `user` field names an end user inside one API key (a memory
scope), never a chat. Recognising a chat from its messages is memory's job, not this module's.
"""

from __future__ import annotations

from collections.abc import Mapping

from memory.types import SessionKey
from proxy.errors import InvalidRequest
from proxy.protocol import ChatCompletionRequest

CONVERSATION_HEADER = "x-anima-conversation"
PERSONA_HEADER = "x-anima-persona"
_UNEXPANDED = ("{{", "}}")  # SillyTavern before 1.19 sends its macros literally


def api_key(headers: Mapping[str, str]) -> str | None:
    """The key from `Authorization: Bearer` or `x-api-key`; SillyTavern's `Bearer undefined` is none."""
    auth = headers.get("authorization", "")
    key = auth[7:].strip() if auth[:7].lower() == "bearer " else headers.get("x-api-key", "").strip()
    return key if key and key not in ("undefined", "null") else None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name.lower(), "").strip()
    if "\x00" in value:
        raise InvalidRequest(f"The {name} header contains a NUL character.", param=name)
    if not value or any(marker in value for marker in _UNEXPANDED):
        return None
    return value[:200]


def requested_persona(headers: Mapping[str, str]) -> str | None:
    """The persona named by `X-Anima-Persona` (an unexpanded client macro names none)."""
    return _header(headers, PERSONA_HEADER)


def identify_session(
    headers: Mapping[str, str],
    body: ChatCompletionRequest,
    *,
    user_id: int,
    character_header: str = "x-st-char",
    user_header: str = "x-st-user",
) -> SessionKey:
    explicit = _header(headers, CONVERSATION_HEADER)
    if explicit is None and body.metadata is not None and body.metadata.conversation_id is not None:
        explicit = body.metadata.conversation_id.strip() or None
    return SessionKey(
        user_id=user_id,
        end_user=(body.user or "")[:200],
        conversation=explicit[:200] if explicit else None,
        character=_header(headers, character_header),
        user_name=_header(headers, user_header),
    )
