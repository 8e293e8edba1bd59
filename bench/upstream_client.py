"""httpx against aiohttp as the upstream client of the OpenAI-compatible backend: CPU per streamed reply.

One process (uvloop, as uvicorn runs Anima) asks the overhead bench's instant backend
(bench/instant_backend.py, its own process) for a streamed SillyTavern-sized chat (the card and 20
history messages of bench/overhead.py, ≈15 kB) through each client in turn, round by round, and reads
the reply as Anima does: each read's bytes as they come. The CPU of this process only
(`time.process_time`) is the client's cost per request; the backend's is not counted.
Run: .venv/bin/python bench/upstream_client.py [--rounds 6] [--requests 300] [--clients 1 8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import httpx
import orjson
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script
from bench.overhead import build_request, free_port, process, uvicorn

Send = Callable[[], Awaitable[int]]


def clients(url: str, body: bytes) -> tuple[dict[str, Send], Callable[[], Awaitable[None]]]:
    """Each client set up as the backend sets it up (pool, timeouts), and how to close them."""
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
    hx = httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(120, connect=5), limits=limits)
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=200, keepalive_timeout=5),
        timeout=aiohttp.ClientTimeout(total=None, connect=120, sock_connect=5, sock_read=120),
        cookie_jar=aiohttp.DummyCookieJar(),
    )
    headers = {"content-type": "application/json"}
    chat = f"{url}/chat/completions"

    async def with_httpx() -> int:
        async with hx.stream("POST", "/chat/completions", content=body, headers=headers) as resp:
            return sum([len(data) async for data in resp.aiter_bytes()])

    async def with_aiohttp() -> int:
        async with session.post(chat, data=body, headers=headers, allow_redirects=False) as resp:
            return sum([len(data) async for data in resp.content.iter_any()])

    async def close() -> None:
        await hx.aclose()
        await session.close()

    return {"httpx": with_httpx, "aiohttp": with_aiohttp}, close


async def run(send: Send, requests: int, concurrency: int) -> float:
    """CPU seconds of this process for `requests` replies, `concurrency` at a time."""
    queue = iter(range(requests))

    async def worker() -> None:
        for _ in queue:
            assert await send() > 0

    started = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.process_time() - started


async def measure(url: str, args: argparse.Namespace) -> None:
    request, _ = build_request()
    body = orjson.dumps(
        request | {"model": "echo", "stream": True, "stream_options": {"include_usage": True}}
    )
    sends, close = clients(url, body)
    try:
        for send in sends.values():  # warm up: connections open, code paths hot
            await run(send, 20, max(args.clients))
        for concurrency in args.clients:
            cpu: dict[str, list[float]] = {name: [] for name in sends}
            for r in range(args.rounds):
                order = list(sends) if r % 2 == 0 else list(reversed(sends))
                for name in order:
                    cpu[name].append(1e6 * await run(sends[name], args.requests, concurrency) / args.requests)
            report(concurrency, cpu, os.getloadavg()[0])
    finally:
        await close()


def report(concurrency: int, cpu: dict[str, list[float]], load: float) -> None:
    means = {name: statistics.mean(values) for name, values in cpu.items()}
    print(f"{concurrency} client(s), load {load:.1f}: CPU µs per streamed request (rounds: mean, min..max)")
    for name, values in cpu.items():
        print(f"  {name:8s} {means[name]:8.0f}   {min(values):.0f}..{max(values):.0f}")
    pairs = [a / h for a, h in zip(cpu["aiohttp"], cpu["httpx"], strict=True)]
    ratio = means["aiohttp"] / means["httpx"]
    print(f"  aiohttp / httpx: {ratio:.2f} (per round {min(pairs):.2f}..{max(pairs):.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds (6)")
    parser.add_argument("--requests", type=int, default=300, help="requests per client and round (300)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8], help="concurrency levels (1 8)")
    args = parser.parse_args()
    port = free_port()
    with contextlib.ExitStack() as stack:
        stack.enter_context(process(uvicorn("bench.instant_backend:app", port), dict(os.environ), "."))
        url = f"http://127.0.0.1:{port}/v1"
        for _ in range(100):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/models").status_code == 200:
                    break
            time.sleep(0.1)
        uvloop.run(measure(url, args))


if __name__ == "__main__":
    main()
