"""`anima` as an operator runs it, in a subprocess: configuration mistakes are one clear line and a
non-zero exit before any slow start-up work (issue 12, item 15), and `--workers 2` serves even when
its workers start slowly (item 4)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import closed_port

ROOT = Path(__file__).resolve().parents[2]
QUICK = {  # nothing slow to load: no embedded model, no emotion model, no memory unless a test says so
    "ANIMA_MEMORY__ENABLED": "false",
    "ANIMA_EMOTION__ENABLED": "false",
    "ANIMA_PERSONAS__EXAMPLES": "false",
}


def stub_config(folder: Path, stub_url: str) -> Path:
    path = folder / "anima.toml"
    path.write_text(
        f'[backends.stub]\nkind = "openai"\nbase_url = "{stub_url}/v1"\n\n'
        '[[models]]\nname = "stub/echo"\nbackend = "stub"\nmodel = "echo"\n'
    )
    return path


def environment(folder: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANIMA_")}
    env |= {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "ANIMA_DATA_DIR": str(folder / "data")}
    return env | QUICK | extra


def anima(folder: Path, *args: str, timeout_s: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `anima ARGS` in `folder` (no ./anima.toml or .env of the developer's)."""
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        cwd=folder,
        env=environment(folder, **env),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "Started server process" not in result.stderr
    return lines[0]


def test_a_config_file_named_explicitly_must_exist(tmp_path: Path) -> None:
    line = one_line_error(anima(tmp_path, "models", "--config", "missing.toml"))
    assert "missing.toml" in line and "does not exist" in line
    line = one_line_error(anima(tmp_path, "models", ANIMA_CONFIG=str(tmp_path / "gone.toml")))
    assert "gone.toml" in line


def test_malformed_toml_is_one_line_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "broken.toml").write_text('[backends.stub\nkind = "openai"\n')
    line = one_line_error(anima(tmp_path, "models", "--config", "broken.toml"))
    assert "broken.toml" in line and "not valid TOML" in line


def test_an_invalid_setting_is_one_line_naming_it(tmp_path: Path) -> None:
    (tmp_path / "anima.toml").write_text('[backends.x]\nkind = "nonsense"\n')
    line = one_line_error(anima(tmp_path, "models"))
    assert "backends.x.kind" in line and "anima.toml" in line


def test_a_port_in_use_is_found_before_start_up(tmp_path: Path, stub_url: str) -> None:
    config = stub_config(tmp_path, stub_url)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = anima(tmp_path, "serve", "--port", str(port), "--config", str(config))
    line = one_line_error(result)
    assert f"127.0.0.1:{port}" in line and "in use" in line


def test_a_wrong_database_url_is_one_line(tmp_path: Path, stub_url: str) -> None:
    config = stub_config(tmp_path, stub_url)
    url = f"postgresql://anima:secret@127.0.0.1:{closed_port()}/anima"
    result = anima(
        tmp_path,
        "serve",
        "--port",
        str(closed_port()),
        "--config",
        str(config),
        ANIMA_MEMORY__ENABLED="true",
        ANIMA_DATABASE_URL=url,
    )
    line = one_line_error(result)
    assert "cannot connect to the database" in line and "ANIMA_DATABASE_URL" in line
    assert "secret" not in line  # the password is not printed


SLOW_START = """
import sys, time
if "--multiprocessing-fork" in sys.argv:  # a worker process: start as slowly as on a loaded machine
    time.sleep(8)
"""


@pytest.fixture
def two_workers(tmp_path: Path, stub_url: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    (tmp_path / "slow").mkdir()
    (tmp_path / "slow" / "sitecustomize.py").write_text(SLOW_START)
    port = closed_port()
    env = environment(tmp_path, PYTHONPATH=f"{tmp_path / 'slow'}{os.pathsep}{ROOT}")
    command = [sys.executable, "-m", "proxy", "serve", "--workers", "2", "--port", str(port)]
    command += ["--config", str(stub_config(tmp_path, stub_url))]
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        yield f"http://127.0.0.1:{port}", process
    finally:
        stop(process)


def stop(process: subprocess.Popen[str]) -> str:
    """SIGTERM to this test's own process group (the server and its workers); what it wrote to stderr."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        return process.communicate(timeout=30)[1] or ""
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        return process.communicate()[1] or ""


def test_two_workers_serve_although_they_start_slowly(two_workers: tuple[str, subprocess.Popen[str]]) -> None:
    url, process = two_workers
    deadline, answered = time.monotonic() + 90, 0
    while time.monotonic() < deadline and answered < 10:
        assert process.poll() is None, "anima serve exited"
        try:
            answered += httpx.get(f"{url}/v1/models", timeout=5).status_code == 200
        except httpx.HTTPError:
            time.sleep(0.5)
    stderr = stop(process)
    assert answered == 10, stderr[-3000:]
    assert "died" not in stderr, stderr[-3000:]  # no worker was killed for starting slowly
