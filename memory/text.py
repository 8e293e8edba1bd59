"""What Postgres cannot store, found before it gets there: a clear 400 instead of a failed write."""

from __future__ import annotations

import math
from typing import Any


def unstorable(value: Any, path: str = "") -> str | None:
    """Where `value` (parsed JSON) holds a NUL character, a lone surrogate, NaN or Infinity, or None.

    Postgres text and jsonb refuse NUL (U+0000) and lone surrogates cannot be encoded as UTF-8;
    jsonb has no NaN or Infinity. Iterative, so deeply nested input cannot exhaust the stack. Every
    chat request is checked: a first pass only looks, and where the problem is is worked out only
    when there is one (building each node's path cost more than the check)."""
    return None if _storable(value) else _where(value, path)


def orjson_storable(raw: bytes) -> bool:
    """Whether JSON `raw`, which orjson parsed, is sure to be storable without walking what it parsed
    (issue 15: the walk cost a chat request ≈70 µs). orjson refuses NaN, infinities (a number too big
    for a double too), lone surrogates, escaped or not, and raw control characters, so only a
    `\\u0000` escape can bring a NUL in; where one may be (an escaped backslash before `u0000` also
    matches), the caller walks as before."""
    return b"\\u0000" not in raw


def _storable(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not _clean(item):
                return False
        elif isinstance(item, float):
            if not math.isfinite(item):
                return False
        elif isinstance(item, dict):
            if not all(_clean(str(key)) for key in item):
                return False
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return True


def _clean(text: str) -> bool:
    """No NUL and no lone surrogate (an ASCII string, the usual key or short value, has neither of
    the latter: `isascii` is a flag look-up, `encode` a copy)."""
    if "\x00" in text:
        return False
    return text.isascii() or _text_problem(text) is None


def _where(value: Any, path: str) -> str | None:
    stack: list[tuple[str, Any]] = [(path, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            problem = _text_problem(item)
            if problem:
                return f"{where or 'value'}: {problem}"
        elif isinstance(item, float) and not math.isfinite(item):
            return f"{where or 'value'}: NaN and Infinity are not accepted"
        elif isinstance(item, dict):
            for key, child in item.items():
                problem = _text_problem(str(key))
                if problem:
                    return f"{where or 'value'}: a key has {problem}"
                stack.append((f"{where}.{key}" if where else str(key), child))
        elif isinstance(item, list | tuple):
            stack.extend((f"{where}.{i}" if where else str(i), child) for i, child in enumerate(item))
    return None


def _text_problem(text: str) -> str | None:
    if "\x00" in text:
        return "NUL characters (U+0000) are not accepted"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "invalid Unicode (a lone surrogate) is not accepted"
    return None
