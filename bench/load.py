"""A bounded load run on loopback: C streaming clients against Anima with memory on, every turn stored.

The stub backend (model "echo"), an embedded Postgres and Anima (`python -m proxy serve`) run as their
own processes. C clients share one httpx.AsyncClient; each has its own conversation
(`X-Anima-Conversation: load-<run>-<client>`) and loops for D seconds: a new user message over the last
10 messages of its history, `stream: true`, the SSE stream read to `[DONE]` and checked (every data
line JSON with `choices`, non-empty content). Afterwards it waits for Anima's background stores and
checks in Postgres: one user and one assistant message per successful request, each sent user message
stored exactly once, no forked branches. Load generator, servers and Postgres share this machine's cores.
The last line of stdout is the figures as JSON; exit 1 on any error or a count that differs.

`--faults pool,postgres,backend,anima` (or `--matrix`: all of them and a clean run) repeats the run once
per fault, injected a third of the way in: `pool` starts Anima with a database pool smaller than the
load (2 connections, no overflow), `postgres` stops Postgres and starts it again, `backend` kills the
stub backend and restarts it, `anima` SIGKILLs Anima and restarts it on the same data folder. Requests
that fail during a fault are expected; what must hold is that every answered turn is stored once. The
report is the fault matrix: clients, requests, answered, stored, duplicated, lost, per fault.
Run: .venv/bin/python bench/load.py [--quick] [--clients N] [--duration S] [--emotion] [--workers N]
                                    [--faults F,...] [--matrix]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import orjson
import psutil
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.overhead import anima_env, free_port, pct, table  # noqa: E402
from memory.db import upgrade_schema  # noqa: E402
from memory.embedded_pg import EmbeddedPostgres  # noqa: E402

HISTORY = 10  # messages of history sent before the new user message (5 turns)
TIMEOUT_S = 30.0  # per request, whole stream included
SETTLE_MAX_S = 180.0  # journaled turns drain in the background after an outage: wait for them
SYSTEM = {"role": "system", "content": "You are a friendly assistant who remembers the conversation."}
NUMBERS = re.compile(r"[0-9a-f]{6,}|\d+")  # ids and counts, blanked to group log lines
TOPICS = ("my garden", "a trip to Lisbon", "learning the cello", "my sister's wedding", "a new job")


class BadStream(Exception):
    """A response that is not a complete, well-formed stream (status, JSON, [DONE], content)."""


@dataclass(slots=True)
class Tally:
    ttft_ms: list[float] = field(default_factory=list)
    total_ms: list[float] = field(default_factory=list)
    sent: dict[str, list[str]] = field(default_factory=dict)  # conversation -> user texts answered
    times: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # text -> start, TTFT, end
    errors: list[str] = field(default_factory=list)
    attempts: int = 0


class StreamCheck:
    """Reads SSE bytes line by line: parses each data line once, keeps the content, notes the first."""

    def __init__(self) -> None:
        self.start, self.pending, self.ttft, self.done = time.perf_counter(), b"", 0.0, False
        self.status: int | None = None
        self.received = 0
        self.parts: list[str] = []

    def describe(self) -> str:
        """How far the response got, for an error report."""
        if self.status is None:
            return "no response headers yet"
        return (
            f"HTTP {self.status}, {self.received} bytes, {len(self.parts)} content deltas, [DONE] {self.done}"
        )

    def feed(self, chunk: bytes) -> None:
        self.received += len(chunk)
        *lines, self.pending = (self.pending + chunk).split(b"\n")
        for line in lines:
            if line.startswith(b"data:"):  # comments and other SSE fields carry nothing to check
                self._data(line[5:].strip())

    def _data(self, data: bytes) -> None:
        if self.done:
            raise BadStream(f"data after [DONE]: {data[:200]!r}")
        if data == b"[DONE]":
            self.done = True
            return
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise BadStream(f"a data line is not JSON: {data[:200]!r}") from None
        if not isinstance(event, dict) or "choices" not in event:
            raise BadStream(f"a data line without choices: {data[:300]!r}")
        for choice in event["choices"]:
            content = (choice.get("delta") or {}).get("content")
            if content:
                self.ttft = self.ttft or time.perf_counter() - self.start
                self.parts.append(content)

    def finish(self) -> tuple[float, float, str]:
        """(seconds to the first content, seconds to the end, the reply)."""
        self.feed(b"\n")
        if not self.done:
            raise BadStream("the stream ended without [DONE]")
        if not self.parts:
            raise BadStream("the stream had no content")
        return self.ttft, time.perf_counter() - self.start, "".join(self.parts)


async def chat(
    http: httpx.AsyncClient, url: str, conversation: str, messages: list[Any], check: StreamCheck
) -> tuple[float, float, str]:
    body = orjson.dumps({"model": "bench/echo", "messages": messages, "stream": True})
    headers = {"content-type": "application/json", "x-anima-conversation": conversation}
    async with http.stream("POST", url, content=body, headers=headers) as resp:
        check.status = resp.status_code
        if resp.status_code != 200:
            raise BadStream(f"HTTP {resp.status_code}: {(await resp.aread())[:300]!r}")
        try:
            async for chunk in resp.aiter_bytes():
                check.feed(chunk)
        except httpx.HTTPError:
            if not check.done:  # cut off after [DONE] (Anima killed): the client saw the whole reply
                raise
        return check.finish()


async def client(http: httpx.AsyncClient, url: str, conversation: str, deadline: float, tally: Tally) -> None:
    """One user: a new message per request, over the last HISTORY messages; a failed turn is dropped."""
    history: list[dict[str, str]] = []
    answered = tally.sent.setdefault(conversation, [])
    turn = 0
    while time.perf_counter() < deadline:
        turn += 1
        text = f"[{conversation} turn {turn}] Let me tell you about {TOPICS[turn % len(TOPICS)]}."
        user = {"role": "user", "content": text}
        started, check = time.time(), StreamCheck()
        tally.attempts += 1
        try:
            async with asyncio.timeout(TIMEOUT_S):
                ttft, total, reply = await chat(
                    http, url, conversation, [SYSTEM, *history[-HISTORY:], user], check
                )
        except Exception as exc:  # any failure of this request counts: status, stream, timeout, bug
            reason = f"timeout after {TIMEOUT_S:g} s" if isinstance(exc, TimeoutError) else repr(exc)
            tally.errors.append(  # the clock times find it in Anima's log
                f"{conversation} turn {turn}, sent {clock(started)}, failed {clock(time.time())}: {reason}"
                f" ({check.describe()})"
            )
            await asyncio.sleep(0.2)  # a server that is down is not hammered
            continue
        tally.ttft_ms.append(1000 * ttft)
        tally.total_ms.append(1000 * total)
        answered.append(text)
        tally.times[text] = (started, ttft, time.time())
        history += [user, {"role": "assistant", "content": reply}]


def cpu_tree(proc: psutil.Process | None, *, descendants: bool = True) -> float:
    """CPU seconds of a process and its live descendants (reaped children included by the OS)."""
    if proc is None:
        return 0.0
    total = 0.0
    try:  # a process killed by a fault run counts nothing
        children = proc.children(recursive=True) if descendants else []
    except psutil.NoSuchProcess:
        return 0.0
    for p in (proc, *children):
        with contextlib.suppress(psutil.NoSuchProcess):
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


def cpu_snapshot(procs: dict[str, psutil.Process | None]) -> dict[str, float]:
    # the load generator's children are the servers: count its own CPU only
    snap = {name: cpu_tree(proc, descendants=name != "load_generator") for name, proc in procs.items()}
    machine = psutil.cpu_times()
    snap["machine"] = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)
    snap["other"] = snap["machine"] - sum(v for k, v in snap.items() if k != "machine")  # not this run
    return snap


def postmaster(pgdata: Path) -> psutil.Process | None:
    for proc in psutil.process_iter(["cmdline"]):
        if str(pgdata) in " ".join(proc.info["cmdline"] or ()):
            return proc
    return None


async def drive(
    args: argparse.Namespace,
    url: str,
    run: str,
    procs: dict[str, Any],
    inject: Callable[[], Awaitable[None]],
) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=args.clients + 10, max_keepalive_connections=args.clients + 10)
    async with httpx.AsyncClient(timeout=TIMEOUT_S, limits=limits) as http:
        await wait_ready(http, url, procs["anima_popen"])
        warm = f"warmup-{run}"  # outside the run prefix: not counted
        for turn in range(3):
            hello = [SYSTEM, {"role": "user", "content": f"hi {turn}"}]
            await chat(http, f"{url}/chat/completions", warm, hello, StreamCheck())
        tally, cpu = Tally(), {k: v for k, v in procs.items() if k != "anima_popen"}
        before, start = cpu_snapshot(cpu), time.perf_counter()
        deadline = start + args.duration
        chats = (
            client(http, f"{url}/chat/completions", f"load-{run}-{i}", deadline, tally)
            for i in range(args.clients)
        )
        await asyncio.gather(inject(), *chats)
        elapsed = time.perf_counter() - start
        after = cpu_snapshot(cpu)
    return {"tally": tally, "elapsed": elapsed, "cpu": {k: after[k] - before[k] for k in after}}


async def wait_ready(http: httpx.AsyncClient, url: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 180  # first start exports the ONNX embedder (and the emotion model)
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"Anima exited with {server.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if (await http.get(f"{url}/models")).status_code == 200:
                return
        await asyncio.sleep(0.2)
    raise RuntimeError("Anima did not come up in 180 s")


class Row(NamedTuple):
    public_id: str
    id: int
    parent_id: int | None
    role: str
    content: str
    created_at: datetime  # the storing transaction's start (now())


ROWS = """SELECT c.public_id, m.id, m.parent_id, m.role, m.content, m.created_at FROM message m
          JOIN conversation c ON c.id = m.conversation_id WHERE c.public_id LIKE %s ORDER BY m.id"""


def stored_rows(dsn: str, prefix: str) -> list[Row]:
    with psycopg.connect(dsn) as conn:
        return [Row(*r) for r in conn.execute(ROWS, (prefix + "%",))]


def settle(dsn: str, prefix: str) -> tuple[list[Row], float]:
    """Poll until the stored rows stop changing for 2 s (at most SETTLE_MAX_S); the rows and the wait."""
    start, last, stable_since = time.monotonic(), -1, time.monotonic()
    while True:
        rows = stored_rows(dsn, prefix)
        now = time.monotonic()
        if len(rows) != last:
            last, stable_since = len(rows), now
        if now - stable_since >= 2 or now - start >= SETTLE_MAX_S:
            return rows, now - start
        time.sleep(0.25)


def verify(rows: list[Row], tally: Tally) -> dict[str, Any]:
    """Stored messages against the requests that succeeded: counts, lost/extra turns, duplicates, forks."""
    users: dict[str, list[str]] = {}
    copies: dict[str, list[Row]] = {}
    children: Counter[tuple[str, int | None]] = Counter()
    assistants = 0
    sent = {(conv, text) for conv, texts in tally.sent.items() for text in texts}
    for row in rows:  # a turn the client never saw complete (stored partial) may branch off: not a fork
        if row.role != "user" or (row.public_id, row.content) in sent:
            children[(row.public_id, row.parent_id)] += 1
        if row.role == "user":
            users.setdefault(row.public_id, []).append(row.content)
            copies.setdefault(row.content, []).append(row)
        assistants += row.role == "assistant"
    stored = {(conv, text) for conv, texts in users.items() for text in texts}
    twice = [rows for rows in copies.values() if len(rows) > 1]
    return {
        "expected": len(sent),
        "user": sum(len(texts) for texts in users.values()),
        "assistant": assistants,
        "duplicates": sum(len(texts) - len(set(texts)) for texts in users.values()),
        "lost": len(sent - stored),
        "unexpected": len(stored - sent),
        # a parent (or the root) with two children the client saw (answered turns, replies)
        "forks": sum(n - 1 for n in children.values() if n > 1),
        "duplicate_detail": [duplicate(rows, tally) for rows in twice[:10]],
    }


def duplicate(copies: list[Row], tally: Tally) -> str:
    """A user message stored more than once, with when its turn and the next one ran (client clock)."""
    text, conv = copies[0].content, copies[0].public_id
    stored = ", ".join(f"id {r.id} parent {r.parent_id} at {clock(r.created_at.timestamp())}" for r in copies)
    line = f"{text[1 : text.index(']')]} stored {len(copies)}x ({stored})"
    answered = tally.sent.get(conv, [])
    if text in tally.times:
        start, ttft, end = tally.times[text]
        line += f"; request {clock(start)}, TTFT {ttft:.2f} s, stream ended {clock(end)}"
        later = answered[answered.index(text) + 1 :]
        if later:
            start, ttft, end = tally.times[later[0]]
            line += f"; next request {clock(start)}, TTFT {ttft:.2f} s, ended {clock(end)}"
    return line


def clock(epoch: float) -> str:
    return datetime.fromtimestamp(epoch).strftime("%H:%M:%S.%f")[:-3]


def log_summary(path: Path) -> dict[str, Any]:
    """Anima's warnings and errors, grouped by logger and message with numbers blanked."""
    found: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        match = re.search(r"(?:^| )(WARNING|ERROR|CRITICAL):? +(\S+) (.*)", line)
        if match:
            text = NUMBERS.sub("#", match[3])[:120]
            found[f"{match[1]} {match[2]}: {text}"] += 1
    return {"lines": sum(found.values()), "top": found.most_common(8), "file": str(path)}


FAULTS = ("pool", "postgres", "backend", "anima")
SMALL_POOL = {"ANIMA_MEMORY__DB_POOL_SIZE": "2", "ANIMA_MEMORY__DB_MAX_OVERFLOW": "0"}


class Lab:
    """The servers of the runs, each of which a fault can stop and start again: the embedded Postgres,
    the stub backend and Anima (in its own process group, so a SIGKILL takes its workers too)."""

    def __init__(self, stack: contextlib.ExitStack, tmp: str, args: argparse.Namespace) -> None:
        self.tmp, self.log = tmp, args.log or Path(tmp) / "anima.log"
        stub_port, anima_port = free_port(), free_port()
        self.stub_cmd = [sys.executable, "-m", "uvicorn", "bench.overhead:stub_factory", "--factory"]
        self.stub_cmd += ["--app-dir", str(ROOT), "--host", "127.0.0.1", "--port", str(stub_port)]
        self.stub_cmd += ["--log-level", "warning", "--no-access-log"]
        self.url = f"http://127.0.0.1:{anima_port}/v1"
        self.pg = EmbeddedPostgres(Path(tmp) / "data")
        db_url = self.pg.start()
        stack.callback(self.pg.stop)  # registered first: stopped after the servers
        upgrade_schema(db_url)
        self.dsn = db_url.replace("postgresql+psycopg", "postgresql")
        stub_url = f"http://127.0.0.1:{stub_port}/v1"
        env = anima_env(stub_url, anima_port, db_url, tmp, no_emotion=not args.emotion)
        env |= {"ANIMA_WORKERS": str(args.workers), "ANIMA_LOG_LEVEL": args.log_level}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(ROOT), env.get("PYTHONPATH"))))  # this tree
        self.env, self.extra = env, dict[str, str]()
        self.stub: subprocess.Popen[bytes] | None = None
        self.anima: subprocess.Popen[bytes] | None = None
        stack.callback(self.stop_servers)
        self.start_stub()

    def _spawn(self, cmd: list[str], env: dict[str, str], log: Path | None) -> subprocess.Popen[bytes]:
        with contextlib.ExitStack() as files:
            err = files.enter_context(log.open("ab")) if log else subprocess.DEVNULL
            return subprocess.Popen(
                cmd, env=env, cwd=self.tmp, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True
            )

    def start_stub(self) -> None:
        self.stub = self._spawn(self.stub_cmd, dict(os.environ), None)

    def start_anima(self, **extra: str) -> None:
        self.extra = extra or self.extra
        self.anima = self._spawn([sys.executable, "-m", "proxy", "serve"], self.env | self.extra, self.log)

    @staticmethod
    def kill(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGKILL) -> None:
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)  # the process group this lab started: the server and its workers
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def stop_anima(self) -> None:
        self.kill(self.anima, signal.SIGTERM)

    def stop_servers(self) -> None:
        self.stop_anima()
        self.kill(self.stub, signal.SIGTERM)

    def procs(self) -> dict[str, Any]:
        assert self.anima is not None and self.stub is not None
        return {
            "anima_popen": self.anima,
            "load_generator": psutil.Process(),
            "anima": psutil.Process(self.anima.pid),
            "postgres": postmaster(self.pg.pgdata),
            "stub": psutil.Process(self.stub.pid),
        }


async def inject(fault: str, lab: Lab, duration: float) -> None:
    """The fault, a third of the way into the run; the outage lasts a fifth of it (Anima: its restart)."""
    if fault not in FAULTS or fault == "pool":  # the small pool is set when Anima starts
        return
    await asyncio.sleep(duration * 0.3)
    print(f"  {clock(time.time())} fault {fault}: injected", flush=True)
    if fault == "postgres":
        await asyncio.to_thread(lab.pg.stop)
        await asyncio.sleep(duration * 0.2)
        await asyncio.to_thread(lab.pg.start)
    elif fault == "backend":
        lab.kill(lab.stub)
        await asyncio.sleep(duration * 0.2)
        lab.start_stub()
    elif fault == "anima":
        lab.kill(lab.anima)  # SIGKILL: no shutdown, no settle; the journal is all that survives
        lab.start_anima()  # the same data folder: it adopts the dead process's journal
        async with httpx.AsyncClient(timeout=10) as http:
            assert lab.anima is not None
            await wait_ready(http, lab.url, lab.anima)
    print(f"  {clock(time.time())} fault {fault}: recovered", flush=True)


def figures(
    args: argparse.Namespace, result: dict[str, Any], stored: dict[str, Any], wait: float, fault: str
) -> dict[str, Any]:
    tally, elapsed, cpu = result["tally"], result["elapsed"], result["cpu"]
    done = len(tally.total_ms)
    kept = not any(stored[k] for k in ("duplicates", "lost", "forks"))  # every answered turn stored once
    clean = kept and stored["user"] == stored["assistant"] == stored["expected"] and not stored["unexpected"]
    return {
        "fault": fault,
        "config": {
            "clients": args.clients,
            "duration_s": args.duration,
            "emotion": args.emotion,
            "workers": args.workers,
            "history_messages": HISTORY,
            "cores": os.cpu_count(),
        },
        "requests": {
            "attempted": tally.attempts,
            "completed": done,
            "errors": len(tally.errors),
            "elapsed_s": elapsed,
            "rps": done / elapsed,
        },
        "latency_ms": {
            "ttft": {"p50": pct(tally.ttft_ms, 50), "p99": pct(tally.ttft_ms, 99)},
            "stream": {"p50": pct(tally.total_ms, 50), "p99": pct(tally.total_ms, 99)},
        },
        "stored": stored | {"settle_s": wait},
        "cpu_cores": {k: v / elapsed for k, v in cpu.items()},
        "anima_cpu_ms_per_request": 1000 * cpu["anima"] / max(1, done),
        "error_sample": tally.errors[:10],
        # a fault may fail requests (and leave partial turns of them); never lose or repeat an answered one
        "pass": (not tally.errors and clean) if fault == "none" else kept,
    }


def report(fig: dict[str, Any], log: dict[str, Any]) -> None:
    cfg, req, lat, st, cores = (
        fig["config"],
        fig["requests"],
        fig["latency_ms"],
        fig["stored"],
        fig["cpu_cores"],
    )
    print(
        f"\n[{fig['fault']}] {cfg['clients']} streaming clients for {cfg['duration_s']:g} s, memory on,"
        f" emotion {'on' if cfg['emotion'] else 'off'}, {cfg['workers']} Anima worker(s). The load"
        f" generator, Anima, Postgres and the stub share this machine's {cfg['cores']} cores:"
        " the figures are a floor."
    )
    rows: list[list[Any]] = [
        ["requests", "errors", "elapsed s", "req/s", "TTFT p50", "p99", "stream p50", "p99"]
    ]
    rows.append([req["completed"], req["errors"], req["elapsed_s"], req["rps"], *lat["ttft"].values()])
    rows[-1] += list(lat["stream"].values())
    table("Load (latencies in ms):", rows)
    rows = [["expected", "user", "assistant", "duplicates", "lost", "unexpected", "forks", "settle s"]]
    rows.append(
        [st[k] for k in ("expected", "user", "assistant", "duplicates", "lost", "unexpected", "forks")]
    )
    rows[-1].append(st["settle_s"])
    table("Stored turns (Postgres, this run's conversations):", rows)
    rows = [list(cores), list(cores.values())]
    table(f"CPU over the run, in cores (Anima {fig['anima_cpu_ms_per_request']:.1f} ms per request):", rows)
    for line in fig["error_sample"]:
        print(f"error: {line}")
    for line in fig["stored"]["duplicate_detail"]:
        print(f"duplicate: {line}")
    print(f"\nAnima warnings/errors in its log: {log['lines']}")
    for text, n in log["top"]:
        print(f"  {n:6d} x {text}")
    print("\nPASS" if fig["pass"] else "\nFAIL")


def matrix(figs: list[dict[str, Any]]) -> None:
    """The fault matrix: what each fault cost in requests, and whether every answered turn was kept."""
    rows: list[list[Any]] = [
        ["fault", "clients", "requests", "answered", "stored", "duplicated", "lost", "forks", "pass"]
    ]
    for fig in figs:
        st = fig["stored"]
        rows.append(
            [
                fig["fault"],
                fig["config"]["clients"],
                fig["requests"]["attempted"],
                fig["requests"]["completed"],
                st["expected"] - st["lost"],
                st["duplicates"],
                st["lost"],
                st["forks"],
                "PASS" if fig["pass"] else "FAIL",
            ]
        )
    table("Fault matrix (stored: answered turns found stored; lost: answered, not stored):", rows)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="20 clients for 10 s")
    parser.add_argument("--clients", type=int, help="concurrent streaming clients (100; quick 20)")
    parser.add_argument("--duration", type=float, help="seconds of load (60; quick 10)")
    parser.add_argument("--emotion", action="store_true", help="emotion step on (off by default)")
    parser.add_argument("--workers", type=int, default=1, help="Anima uvicorn workers (ANIMA_WORKERS)")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log", type=Path, help="keep Anima's stderr in this file (default: a temp file)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument(
        "--faults", type=lambda v: v.split(","), default=["none"], help=f"none,{','.join(FAULTS)} (none)"
    )
    parser.add_argument("--matrix", action="store_true", help="a clean run, then one per fault")
    args = parser.parse_args()
    args.faults = ["none", *FAULTS] if args.matrix else args.faults
    unknown = set(args.faults) - {"none", *FAULTS}
    if unknown:
        parser.error(f"unknown fault(s): {', '.join(sorted(unknown))}")
    args.clients = args.clients or (20 if args.quick else 100)
    args.duration = args.duration or (10.0 if args.quick else 60.0)
    return args


def main() -> int:
    args = parse_args()
    figs: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory())  # servers' cwd: no stray anima.toml/.env
        lab = Lab(stack, tmp, args)
        for fault in args.faults:
            run = secrets.token_hex(3)
            lab.start_anima(**(SMALL_POOL if fault == "pool" else {"ANIMA_MEMORY__DB_POOL_SIZE": "10"}))
            print(
                f"run {run} [{fault}]: {args.clients} clients, {args.duration:g} s; log: {lab.log}",
                flush=True,
            )
            result = asyncio.run(
                drive(args, lab.url, run, lab.procs(), functools.partial(inject, fault, lab, args.duration))
            )
            rows, wait = settle(lab.dsn, f"load-{run}-")
            figs.append(figures(args, result, verify(rows, result["tally"]), wait, fault))
            lab.stop_anima()
        summary = log_summary(lab.log)
    for fig in figs:
        report(fig, summary)
    if len(figs) > 1:
        matrix(figs)
    out: dict[str, Any] = figs[0] if len(figs) == 1 else {"runs": figs, "pass": all(f["pass"] for f in figs)}
    out["anima_log"] = summary
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    print(json.dumps(out))
    return 0 if out["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
