"""Seeing inside: Prometheus /metrics after real traffic (parsed with prometheus-client's own parser),
request ids, one access line per request, JSON logs, and a quiet first start.

- In process (uvicorn in a thread, real Postgres, the real embedder): chat turns through the OpenAI SDK
  move the request counters, the step histograms and the token counters by exactly what was sent.
- `anima serve --workers 2 --log-json` on a fresh data folder (so initdb runs): every scrape, whichever
  worker answers it, sums both workers; every log line is JSON with a request id; each request has one
  access line and no message text appears anywhere; start-up prints a handful of lines.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memory.users import create_key
from proxy.main import create_app
from proxy.setting_groups import BackendSettings, MemorySettings, RouteSettings
from tests.conftest import closed_port, make_settings
from tests.memory.test_e2e import data_dir_with_models, models_cache  # noqa: F401 (fixture)
from tests.servers.runner import serving

REPLY = "Hello from the stub!"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(response: httpx.Response) -> Samples:
    """Every sample of a /metrics answer, keyed by (sample name, labels), via prometheus-client's parser."""
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def scrape(url: str) -> Samples:
    return parse(httpx.get(f"{url}/metrics", timeout=30))


def total(samples: Samples, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (n, found), v in samples.items() if n == name and wanted <= found)


@pytest.fixture
def memory_app(
    pg_url: str,
    stub_url: str,
    models_cache: Path,  # noqa: F811
    tmp_path: Path,
) -> Iterator[str]:
    """The production lifespan (it builds its own engine, in the server's event loop) on the test Postgres."""
    backends = {"stub": BackendSettings(kind="openai", base_url=f"{stub_url}/v1")}
    routes = [RouteSettings(name="stub/echo", backend="stub", model="echo", context_window=8192)]
    settings = make_settings(
        backends=backends,
        models=routes,
        memory=MemorySettings(enabled=True, deadline_ms=10_000),
        database_url=pg_url,
        data_dir=data_dir_with_models(tmp_path / "data", models_cache),
        retries=0,
    )
    with serving(create_app(settings)) as url:
        yield url


async def test_metrics_count_real_traffic(
    memory_app: str, sessions: async_sessionmaker[AsyncSession]
) -> None:
    async with sessions.begin() as s:
        _, key = await create_key(s, "metrics")
    async with httpx.AsyncClient(base_url=memory_app, timeout=60) as http:
        before = parse(await http.get("/metrics"))
        client = openai.AsyncOpenAI(base_url=f"{memory_app}/v1", api_key=key, max_retries=0)
        for i in range(3):
            await client.chat.completions.create(
                model="stub/echo",
                messages=[{"role": "user", "content": f"metrics turn {i}"}],
                extra_headers={"X-Anima-Conversation": "metrics-chat"},
            )
        stream = await client.chat.completions.create(
            model="stub/echo", messages=[{"role": "user", "content": "streamed"}], stream=True
        )
        assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == REPLY
        missing = await http.get("/v1/conversations/nope", headers={"Authorization": f"Bearer {key}"})
        assert missing.status_code == 404
        after = parse(await http.get("/metrics"))

    def grew(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    chat = {"route": "/v1/chat/completions", "method": "POST"}
    assert grew("anima_requests_total", **chat, status="200", backend="stub") == 4
    assert grew("anima_requests_total", route="/v1/conversations/{conversation_id}", status="404") == 1
    assert grew("anima_request_duration_seconds_count", **chat) == 4
    for step in ("recognise", "recall", "assemble", "backend_ttft"):
        assert grew("anima_pipeline_step_seconds_count", step=step) == 4, step
    assert grew("anima_memory_turns_total", status="ok") == 4
    assert grew("anima_tokens_total", direction="out", backend="stub") > 0
    assert grew("anima_tokens_total", direction="in", backend="stub") > 0
    assert ("anima_journal_depth", frozenset()) in after
    assert total(after, "anima_embedding_backlog") >= 0


def test_request_id_is_returned_and_a_sane_one_is_kept(anima_url: str) -> None:
    fresh = httpx.get(f"{anima_url}/health").headers["x-request-id"]
    assert len(fresh) == 32
    kept = httpx.get(f"{anima_url}/health", headers={"X-Request-Id": "trace-42"})
    assert kept.headers["x-request-id"] == "trace-42"
    odd = httpx.get(f"{anima_url}/health", headers={"X-Request-Id": "no spaces <here>"})
    assert odd.headers["x-request-id"] != "no spaces <here>"


SECRET = "zebra-sapphire-41"  # in every message sent below; it must never reach a log line


@contextlib.contextmanager
def anima_process(
    settings: dict[str, str], log_file: Path, cwd: Path, *options: str, workers: int = 1
) -> Iterator[str]:
    """`python -m proxy serve` with these ANIMA_* settings, output to `log_file`, until every worker
    answers /health (each on a new connection, so both workers are reached)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANIMA_", "PROMETHEUS_"))}
    env |= {f"ANIMA_{k}": v for k, v in settings.items()}
    port = closed_port()
    command = [sys.executable, "-m", "proxy", "serve", "--workers", str(workers), "--port", str(port)]
    with log_file.open("wb") as sink:
        process = subprocess.Popen(
            [*command, *options], env=env, cwd=cwd, stdout=sink, stderr=subprocess.STDOUT
        )
        url = f"http://127.0.0.1:{port}"
        try:
            pids: set[int] = set()
            deadline = time.monotonic() + 180
            while len(pids) < workers and time.monotonic() < deadline:
                assert process.poll() is None, log_file.read_text()
                try:
                    with httpx.Client(limits=httpx.Limits(max_keepalive_connections=0), timeout=5) as client:
                        pids.add(client.get(f"{url}/health").json()["workers"]["pid"])
                except httpx.HTTPError:
                    time.sleep(0.3)
            assert len(pids) == workers, "not every worker answered"
            yield url
        finally:
            process.terminate()
            process.wait(timeout=30)


def stub_settings(stub_url: str, data_dir: Path) -> dict[str, str]:
    route = [{"name": "stub/echo", "backend": "stub", "model": "echo", "context_window": 8192}]
    return {
        "CONFIG": os.devnull,
        "DATA_DIR": str(data_dir),
        "MEMORY__ENABLED": "true",
        "EMOTION__ENABLED": "false",
        "PERSONAS__EXAMPLES": "false",
        "BACKENDS__STUB__KIND": "openai",
        "BACKENDS__STUB__BASE_URL": f"{stub_url}/v1",
        "MODELS": json.dumps(route),
        "SSE_PING_S": "0",
    }


@pytest.fixture
async def key(sessions: async_sessionmaker[AsyncSession]) -> str:
    async with sessions.begin() as s:
        _, value = await create_key(s, "observability")
    return value


@pytest.mark.slow
def test_two_workers_share_metrics_and_log_json_lines(
    key: str,
    pg_url: str,
    stub_url: str,
    models_cache: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    settings = stub_settings(stub_url, data_dir_with_models(tmp_path / "data", models_cache))
    settings["DATABASE_URL"] = pg_url
    log_file = tmp_path / "anima.log"
    n = 20
    ids: list[str] = []
    with anima_process(settings, log_file, tmp_path, "--log-json", workers=2) as url:
        for i in range(n):  # a new connection each time: both workers answer some
            with httpx.Client(limits=httpx.Limits(max_keepalive_connections=0), timeout=60) as client:
                body = {"model": "stub/echo", "messages": [{"role": "user", "content": f"{SECRET} {i}"}]}
                headers = {"X-Request-Id": f"req-{i}", "Authorization": f"Bearer {key}"}
                response = client.post(f"{url}/v1/chat/completions", json=body, headers=headers)
                assert response.status_code == 200
                ids.append(response.headers["x-request-id"])
        assert ids == [f"req-{i}" for i in range(n)]
        for _ in range(4):  # whichever worker answers the scrape, it reports both workers' requests
            samples = scrape(url)
            chat = {"route": "/v1/chat/completions", "status": "200", "backend": "stub"}
            assert total(samples, "anima_requests_total", **chat) == n
            assert total(samples, "anima_pipeline_step_seconds_count", step="recall") == n
    records = [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()]
    assert all({"time", "level", "logger", "request_id", "message"} <= r.keys() for r in records)
    access = [r for r in records if r["logger"] == "anima.access" and r["route"] == "/v1/chat/completions"]
    assert sorted(r["request_id"] for r in access) == sorted(ids)  # one access line per request
    assert all(r["status"] == 200 and r["duration_ms"] > 0 and r["backend"] == "stub" for r in access)
    assert SECRET not in log_file.read_text()


@pytest.mark.slow
def test_a_first_start_is_quiet(
    stub_url: str,
    models_cache: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A fresh data folder: initdb and the migrations run, and say so in a line or two, not ~80.

    The folder is not under pytest's basetemp: initdb runs as pgserver's own user, and other pytest
    sessions on the machine tidy /tmp/pytest-of-<user> (seen as "Permission denied" mid-initdb)."""
    data = Path(tempfile.mkdtemp(prefix="anima-first-start-"))
    try:
        settings = stub_settings(stub_url, data_dir_with_models(data / "data", models_cache))
        log_file = tmp_path / "anima.log"
        with anima_process(settings, log_file, tmp_path):
            lines = [line for line in log_file.read_text().splitlines() if line.strip()]
    finally:
        shutil.rmtree(data, ignore_errors=True)
    startup = [line for line in lines if "anima.access" not in line]
    assert any("Anima ready" in line for line in startup)
    assert all("[-]" in line for line in startup if " INFO " in line)  # the request-id field, empty
    assert len(startup) <= 12, "\n".join(startup)


@pytest.mark.parametrize(
    ("page", "asset"), [("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")]
)
def test_api_docs_load_their_assets_from_anima(anima_url: str, page: str, asset: str) -> None:
    html = httpx.get(f"{anima_url}{page}").text
    assert f"/static/docs/{asset}" in html
    assert "cdn." not in html and "googleapis" not in html  # nothing from elsewhere: it works offline
    script = httpx.get(f"{anima_url}/static/docs/{asset}")
    assert script.status_code == 200 and len(script.content) > 100_000


def test_the_grafana_dashboard_uses_only_metrics_anima_exports(anima_url: str) -> None:
    dashboard = json.loads((Path(__file__).resolve().parents[2] / "grafana" / "anima.json").read_text())
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"anima_[a-z_]+", target["expr"])
    }
    families = {f.name for f in text_string_to_metric_families(httpx.get(f"{anima_url}/metrics").text)}
    suffixes = ("_total", "_bucket", "_count", "_sum")
    unknown = {
        n for n in used if n not in families and not any(n.removesuffix(s) in families for s in suffixes)
    }
    assert used and not unknown
