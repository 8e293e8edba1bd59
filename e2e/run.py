"""`python -m e2e.run`: the SillyTavern end-to-end check. Starts the logging backend, the recording
proxy, Anima (from --anima-src) and SillyTavern, drives every flow in headless Chromium, checks what
Anima stored and forwarded, saves fixtures, prints the scenario table; exit 1 if a flow failed."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2e import checks
from e2e.anima import Anima, MemoryApi
from e2e.browser import Tavern, open_page
from e2e.cards import Card
from e2e.flows import FLOWS, Ctx, Flow
from e2e.procs import wait_until
from e2e.recorder import RecorderState, recorder_app
from e2e.report import Outcome, save_fixture, save_result, table
from e2e.sillytavern import USER, SillyTavern, installed
from tests.servers.openai_stub import StubState, stub_app
from tests.servers.runner import ServerThread

REPO = Path(__file__).resolve().parent.parent
NAMES = [
    "Ada",
    "Bea",
    "Cyd",
    "Dov",
    "Eli",
    "Fay",
    "Gus",
    "Hal",
    "Ira",
    "Kit",
    "Lou",
    "Max",
    "Ned",
    "Oda",
    "Pia",
]
GROUP = ("e2e-group", "Reading Club", ["Ivy", "Jon"])


def card(name: str, flow: str) -> Card:
    return Card(
        name,
        f"*{name} looks up from a book.* Welcome to the library, traveller. I am {name}.",
        f"{name} is the librarian of the {flow} wing. {name} answers briefly.",
    )


@dataclass
class Stack:
    backend: StubState
    recorder: RecorderState
    memory: MemoryApi
    st: SillyTavern


def cards_for(flows: list[Flow]) -> tuple[dict[str, Card], list[Card]]:
    per_flow = {f.name: card(NAMES[i % len(NAMES)], f.name) for i, f in enumerate(flows) if not f.group}
    members = [card(n, "group") for n in GROUP[2]]
    return per_flow, members


def start(stack: ExitStack, src: Path, work: Path, cards: list[Card], members: list[Card]) -> Stack:
    backend = StubState()
    backend_url = _serve(stack, ServerThread(stub_app(backend)))
    anima = Anima(src, work, backend_url)
    anima_proc = anima.launch()
    stack.callback(anima_proc.stop)
    recorder = RecorderState(upstream=anima.url)
    recorder_url = _serve(stack, ServerThread(recorder_app(recorder)))
    st = SillyTavern(installed(REPO / ".e2e" / "st"), work, f"{recorder_url}/v1")
    st.prepare(cards + members, {GROUP[0]: (GROUP[1], members)})
    st_proc = st.launch()
    stack.callback(st_proc.stop)
    anima_proc.wait_ready(anima.health_url, timeout_s=900)
    st_proc.wait_ready(st.url, timeout_s=900)
    return Stack(backend, recorder, MemoryApi(anima.url), st)


def _serve(stack: ExitStack, server: ServerThread) -> str:
    server.start()
    stack.callback(server.stop)
    return server.url


def settled(memory: MemoryApi, known: set[str]) -> dict[str, checks.Stored]:
    """The flow's new conversations once Anima has stopped writing (stores happen after the reply)."""
    last: list[Any] = []
    stable = 0

    def quiet() -> bool:
        nonlocal last, stable
        convs = [c for c in memory.conversations() if c["id"] not in known]
        now = [(c["id"], memory.messages(c["id"])) for c in convs]
        stable = stable + 1 if now == last else 0
        last = now
        return stable >= 4

    wait_until(quiet, 180, "Anima to finish storing", every_s=1.0)
    return {cid: checks.Stored(cid, msgs) for cid, msgs in last}


def evaluate(
    flow: Flow,
    chats: list[list[dict[str, Any]]],
    seen: list[list[dict[str, Any]]],
    stored: dict[str, checks.Stored],
    stack: Stack,
    since: float,
    names: set[str],
) -> list[str]:
    failures: list[str] = []
    if len(stored) != flow.conversations:
        failures.append(f"{len(stored)} new conversation(s) in Anima, expected {flow.conversations}")
    sent = stack.recorder.of(flow.name)
    for conv in stored.values():
        failures += checks.duplicates(conv, names)
        failures += checks.strays(conv, chats + seen, sent, names)
    for chat in chats:
        if not stored:
            break
        conv = max(stored.values(), key=lambda c: _overlap(c, chat, names))
        failures += checks.branch_matches(conv, chat, names)
        if flow.group:
            failures += checks.speakers(conv, chat, names)
    upstream = [
        (at, body)
        for at, body in zip(stack.backend.received, stack.backend.requests, strict=True)
        if at >= since
    ]
    failures += checks.forwarded(sent, upstream)
    return failures


def _overlap(conv: checks.Stored, chat: list[dict[str, Any]], names: set[str]) -> int:
    want, got = checks.displayed(chat, names), checks.stored_lines(conv.branch(), names)
    return sum(1 for w, g in zip(want, got, strict=False) if w == g)


def run_flow(flow: Flow, tavern: Tavern, stack: Stack, ctx: Ctx, args: argparse.Namespace) -> Outcome:
    outcome = Outcome(flow.name, flow.what)
    known = {c["id"] for c in stack.memory.conversations()}
    since = time.time()
    stack.recorder.flow = flow.name
    chats: list[list[dict[str, Any]]] = []
    tavern.seen = []
    try:
        tavern.reset_settings()
        if not flow.group:
            tavern.open_character(ctx.card.avatar)
        chats = flow.run(tavern, ctx)
    except Exception as exc:  # a broken flow is reported, and the next one still runs
        outcome.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        traceback.print_exc()
        tavern.page.screenshot(path=str(args.work / f"{flow.name}-error.png"))
    finally:
        stack.recorder.flow = "between"
    names = {USER, ctx.card.name, *(m.name for m in ctx.members)}
    stored = settled(stack.memory, known)
    if chats:
        outcome.failures = evaluate(flow, chats, tavern.seen, stored, stack, since, names)
        save_fixture(args.fixtures, flow.name, stack.recorder.of(flow.name), chats)
    save_result(
        args.work / "results",
        flow.name,
        {
            "outcome": outcome.__dict__,
            "chats": chats,
            "seen": tavern.seen,
            "sent_at": [r.at for r in stack.recorder.of(flow.name)],
            "upstream_at": [at for at in stack.backend.received if at >= since],
            "stored": {k: v.messages for k, v in stored.items()},
            "upstream": [
                b for at, b in zip(stack.backend.received, stack.backend.requests, strict=True) if at >= since
            ],
        },
    )
    if outcome.error:
        tavern.page.reload(wait_until="domcontentloaded")
        tavern.ready()
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--anima-src", type=Path, default=REPO, help="checkout of Anima under test")
    parser.add_argument("--only", nargs="*", help="run only these flows")
    parser.add_argument("--fixtures", type=Path, default=REPO / "tests/fixtures/sillytavern/flows")
    parser.add_argument("--work", type=Path, default=None, help="logs and results (default: a temp dir)")
    args = parser.parse_args(argv)
    flows = [f for f in FLOWS if not args.only or f.name in args.only]
    args.work = (args.work or Path(tempfile.mkdtemp(prefix="anima-e2e-"))).resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"anima: {args.anima_src}  work: {args.work}", flush=True)
    per_flow, members = cards_for(flows)
    outcomes: list[Outcome] = []
    with ExitStack() as stack_:
        stack = start(stack_, args.anima_src.resolve(), args.work, list(per_flow.values()), members)
        chats = lambda: sum(1 for r in stack.recorder.records if r.path.endswith("/chat/completions"))  # noqa: E731
        with open_page(stack.st.url) as page:
            tavern = Tavern(page, chats)
            tavern.ready()
            for flow in flows:
                ctx = Ctx(
                    per_flow.get(flow.name, members[0]),
                    members if flow.group else [],
                    GROUP[0] if flow.group else None,
                    stack.backend,
                )
                print(f"--- {flow.name}: {flow.what}", flush=True)
                outcomes.append(run_flow(flow, tavern, stack, ctx, args))
                print(
                    f"    {'pass' if outcomes[-1].passed else 'FAIL: ' + outcomes[-1].reason()}", flush=True
                )
    print(table(outcomes))
    (args.work / "table.md").write_text(table(outcomes) + "\n")
    return 0 if all(o.passed for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
