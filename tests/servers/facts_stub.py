"""Scripted fact extractors for the stub upstream (`facts-*` models): a rule-based reader of the
numbered transcript in Anima's extraction prompt, answering in a model-specific way.

    facts-valid    clean JSON: what the rules find
    facts-repeat   every fact twice in one answer
    facts-broken   per call, in turn: unclosed prose JSON, a fact citing message 99, then a valid answer
                   in a code fence with trailing commas and a percent confidence
    facts-never    prose, every time
    facts-invent   the rules' facts plus one the conversation never said (the yacht)
"""

from __future__ import annotations

import json
import re
from typing import Any

LINE = re.compile(r'^\[(\d+)\] ([^:]+): (".*")$', re.M)

RULES: list[tuple[str, Any]] = [
    (
        r"\bmy name is (\w+)|\bcall me (\w+)",
        lambda g: ("user", None, "identity", "name", g[0], f"The user's name is {g[0]}."),
    ),
    (
        r"\bi live in ([A-Z]\w+)|\bi moved to ([A-Z]\w+)",
        lambda g: ("user", None, "location", "home city", g[0], f"The user lives in {g[0]}."),
    ),
    (
        r"\bmy sister (\w+) is an? (\w+)",
        lambda g: ("other", g[0], "work", "job", g[1], f"The user's sister {g[0]} is a {g[1]}."),
    ),
    (
        r"\bi have a dog named (\w+)",
        lambda g: ("user", None, "possession", "dog's name", g[0], f"The user has a dog named {g[0]}."),
    ),
    (
        r"\bi (?:don't|do not) have a dog anymore",
        lambda g: ("user", None, "possession", "dog's name", "none", "The user no longer has a dog."),
    ),
    (r"\bi work as an? (\w+)", lambda g: ("user", None, "work", "job", g[0], f"The user works as a {g[0]}.")),
]


def read(prompt: str) -> list[dict[str, Any]]:
    """What the rules find in the numbered user lines of an extraction prompt."""
    found = []
    for number, speaker, quoted in LINE.findall(prompt):
        if speaker != "user":
            continue
        text = json.loads(quoted)
        for pattern, make in RULES:
            for match in re.finditer(pattern, text, re.I):
                groups = [g for g in match.groups() if g]
                about, name, kind, attribute, value, statement = make(groups)
                found.append(
                    {
                        "about": about,
                        "name": name,
                        "kind": kind,
                        "attribute": attribute,
                        "value": value,
                        "statement": statement,
                        "confidence": 0.8,
                        "message": int(number),
                    }
                )
    return found


def answer(model: str, call: int, prompt: str) -> str:
    facts = read(prompt)
    if model == "facts-repeat":
        facts = facts + facts
    if model == "facts-never":
        return "I am not able to list facts right now, sorry."
    if model == "facts-invent" and facts:
        facts.append(
            facts[0] | {"attribute": "boat", "value": "yacht", "statement": "The user owns a yacht."}
        )
    if model == "facts-broken":
        step = (call - 1) % 3
        if step == 0:
            return "Sure! Here you go: {'facts': [{about: 'user', kind: 'identity',"
        if step == 1:
            stray = {
                "about": "user",
                "kind": "other",
                "attribute": "x",
                "value": "y",
                "statement": "The user is y.",
            }
            return json.dumps({"facts": [*facts, stray | {"confidence": 0.5, "message": 99}]})
        body = json.dumps({"facts": [f | {"confidence": "90%"} for f in facts]}, indent=1)
        return "```json\n" + body[:-2] + ",\n}\n```"
    return json.dumps({"facts": facts})
