"""Structured answers from language models: JSON repair, validation and bounded retries.

Models, small local ones especially, wrap JSON in prose or code fences, leave trailing commas, use
single quotes or answer on a 0-100 scale. `json_object`/`loads` repair what is safe to repair; what
cannot be repaired (a missing or wrong field) goes back to the model with the validation error, a
bounded number of times (`ask`). Used by persona learning and fact extraction alike.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from pydantic import ValidationError

log = logging.getLogger("anima.structured")

T = TypeVar("T")
Complete = Callable[[str, dict[str, Any]], Awaitable[str]]  # (prompt, JSON schema) -> model's text


class StructuredError(ValueError):
    """No valid answer after every try; `attempts` holds each try's problem."""

    def __init__(self, message: str, attempts: Sequence[str]) -> None:
        super().__init__(message)
        self.attempts = list(attempts)


def json_object(text: str) -> str:
    """The first balanced {...} in `text` (models add prose and code fences around it)."""
    text = re.sub(r"```(?:json)?", "", text)
    start = text.find("{")
    if start < 0:
        raise ValueError("no JSON object in the answer")
    depth, quote, escaped = 0, "", False
    for i in range(start, len(text)):
        ch = text[i]
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start : i + 1]
    raise ValueError("the JSON object in the answer is not closed")


def loads(raw: str) -> Any:
    """`json.loads`, after repairing smart quotes, trailing commas, Python literals and bare keys."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        pass
    fixed = raw.replace("\u201c", '"').replace("\u201d", '"').replace("\u2018", "'").replace("\u2019", "'")
    fixed = re.sub(r",\s*([}\]])", r"\1", fixed)  # trailing commas
    fixed = re.sub(r"\bTrue\b", "true", re.sub(r"\bFalse\b", "false", re.sub(r"\bNone\b", "null", fixed)))
    if '"' not in fixed:  # Python-style single quotes throughout
        fixed = fixed.replace("'", '"')
    fixed = re.sub(r"([:\[,{]\s*)'([^'\"\\]*)'", r'\1"\2"', fixed)  # single-quoted values among double
    fixed = re.sub(r"([{,]\s*)([A-Za-z_][\w ]*?)\s*:", r'\1"\2":', fixed)  # unquoted keys
    try:
        return json.loads(fixed)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from exc


def parse_object(text: str) -> dict[str, Any]:
    """The answer's JSON object, repaired; ValueError if there is none."""
    data = loads(json_object(text))
    if not isinstance(data, dict):
        raise ValueError("the answer is not a JSON object")
    return data


def number(value: Any) -> Any:
    """A number, or a numeric/percent string as one (percent → 0-1); anything else unchanged."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*(%?)\s*", value)
        if match:
            return float(match.group(1)) / (100 if match.group(2) else 1)
    return value


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def units(values: dict[Any, Any]) -> dict[str, Any]:
    """One mapping of intensities into 0-1: the largest number tells the scale (0-1, 0-10 or 0-100)."""
    out = {str(k).strip().lower(): number(v) for k, v in values.items()}
    top = max((v for v in out.values() if is_number(v)), default=0)
    return {k: unit(v, top) if is_number(v) else v for k, v in out.items()}


def unit(value: float, top: float | None = None) -> float:
    """One intensity into 0-1; `top` (default: the value itself) tells the scale (0-1, 0-10 or 0-100)."""
    top = value if top is None else top
    scale = 100 if top > 10 else 10 if top > 1 else 1
    return round(min(1.0, max(0.0, value / scale)), 3)


def first_error(exc: ValidationError) -> str:
    """A pydantic error as one line naming the field, for the model to fix."""
    first = exc.errors()[0]
    return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"


async def ask(
    complete: Complete,
    prompt: str,
    schema: dict[str, Any],
    parse: Callable[[str], T],
    *,
    tries: int = 3,
    what: str = "answer",
) -> T:
    """Ask, check with `parse` (ValueError = invalid), and ask again with the error; at most `tries` calls."""
    problems: list[str] = []
    question = prompt
    for attempt in range(1, tries + 1):
        answer = await complete(question, schema)
        try:
            return parse(answer)
        except ValueError as exc:
            problems.append(str(exc))
            log.info("%s try %d of %d was invalid: %s", what, attempt, tries, exc)
            question = (
                f"{prompt}\n\nYour previous answer could not be used: {exc}. Answer again with one JSON"
                " object with all the keys above and nothing else."
            )
    raise StructuredError(f"no valid {what} after {tries} tries: {problems[-1]}", problems)
