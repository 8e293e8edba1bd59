"""`python -m e2e.run`: the SillyTavern end-to-end check. Starts the logging backend, the recording
proxy, Anima (from --anima-src) and SillyTavern, drives every flow in headless Chromium, checks what
Anima stored and forwarded, saves fixtures, prints the scenario table; exit 1 if a flow failed."""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
import traceback
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from e2e import checks
from e2e.anima import MemoryApi
from e2e.browser import Tavern, open_page
from e2e.flows import FLOWS, Ctx, Flow
from e2e.procs import wait_until
from e2e.report import Outcome, save_fixture, save_result, table
from e2e.sillytavern import USER
from e2e.stack import GROUP_ID, REPO, Stack, cards_for, start


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
        sent, upstream = stack.recorder.of(flow.name), stack.upstream_since(since)
        evidence = checks.Evidence(chats, tavern.seen, sent, stored, upstream, names)
        outcome.failures = checks.flow_failures(evidence, conversations=flow.conversations, group=flow.group)
        save_fixture(args.fixtures, flow.name, sent, chats, tavern.seen)
    save_result(
        args.work / "results",
        flow.name,
        {
            "outcome": outcome.__dict__,
            "chats": chats,
            "seen": tavern.seen,
            "sent_at": [r.at for r in stack.recorder.of(flow.name)],
            "stored": {k: v.messages for k, v in stored.items()},
            "upstream": [{"at": at, "body": body} for at, body in stack.upstream_since(since)],
        },
    )
    if outcome.error:
        tavern.page.reload(wait_until="domcontentloaded")
        tavern.ready()
    return outcome


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # so a `kill` still stops Anima, SillyTavern and Chromium


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--anima-src", type=Path, default=REPO, help="checkout of Anima under test")
    parser.add_argument("--only", nargs="*", choices=[f.name for f in FLOWS], help="run only these flows")
    parser.add_argument("--fixtures", type=Path, default=REPO / "tests/fixtures/sillytavern/flows")
    parser.add_argument("--work", type=Path, default=None, help="logs and results (default: a temp dir)")
    args = parser.parse_args(argv)
    flows = [f for f in FLOWS if not args.only or f.name in args.only]
    args.work = (args.work or Path(tempfile.mkdtemp(prefix="anima-e2e-"))).resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"anima: {args.anima_src}  work (logs, results): {args.work}", flush=True)
    outcomes = run_all(flows, args)
    print(table(outcomes))
    (args.work / "table.md").write_text(table(outcomes) + "\n")
    return 0 if all(o.passed for o in outcomes) else 1


def run_all(flows: list[Flow], args: argparse.Namespace) -> list[Outcome]:
    per_flow, members = cards_for(flows)
    outcomes: list[Outcome] = []
    with ExitStack() as exits:
        stack = start(exits, args.anima_src.resolve(), args.work, list(per_flow.values()), members)
        with open_page(stack.st.url) as page:
            tavern = Tavern(page, stack.chat_requests)
            tavern.ready()
            for flow in flows:
                card = per_flow.get(flow.name, members[0])
                group = members if flow.group else []
                ctx = Ctx(card, group, GROUP_ID if flow.group else None, stack.backend)
                print(f"--- {flow.name}: {flow.what}", flush=True)
                outcomes.append(run_flow(flow, tavern, stack, ctx, args))
                print(
                    f"    {'pass' if outcomes[-1].passed else 'FAIL: ' + outcomes[-1].reason()}", flush=True
                )
    return outcomes


if __name__ == "__main__":
    sys.exit(main())
