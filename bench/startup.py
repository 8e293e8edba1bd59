"""How long `anima serve` takes to be ready: on a fresh data dir, then restarted on the same one.

    .venv/bin/python bench/startup.py [--runs 3] [--source DIR] [--path /health/ready]
        [--compare OLDER_CHECKOUT --compare-path /health] [--nice -15]

Each run starts `python -m proxy serve` as `make serve` does (defaults: embedded Postgres with memory
and emotion on, the embedded SmolLM2 backend), from an empty working folder (no anima.toml or .env)
with a new data dir, and polls `--path` until it answers 200; then stops it (SIGINT, as Ctrl-C) and
starts it again on the same data dir. The ONNX graphs come from the shared model cache, which
`make install` / `anima models build` fills; pass `--source` to time another checkout (e.g. an older
commit, with `--path /health`), or `--compare` one, run alternately with this one so both see the same
machine load.

Prints per run: fresh and restart seconds to ready (and the CPU seconds the Anima process used by
then, which a busy machine inflates far less), the medians, their ratio to the targets (fresh <= 10 s,
restart <= 5 s) and, with `--compare`, this checkout's time over the other's.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"fresh": 10.0, "restart": 5.0}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


NICE: list[str] = []  # ["nice", "-n", N] with --nice


def start(source: Path, data_dir: Path, workdir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(source), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("ANIMA_CONFIG", None)  # the empty working folder has no ./anima.toml: the defaults
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # an installed Anima has its bytecode (see compile())
    env.update(ANIMA_DATA_DIR=str(data_dir), ANIMA_PORT=str(port))
    command = [*NICE, sys.executable, "-m", "proxy", "serve"]
    with log.open("ab") as out:
        return subprocess.Popen(command, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)


def compile_sources(source: Path) -> None:
    """Bytecode for the checkout's own modules, as `make install` and the image write it at install,
    so no run pays for compiling them (the installed libraries have theirs already)."""
    folders = [str(source / name) for name in ("proxy", "memory", "emotion", "personas")]
    subprocess.run([sys.executable, "-m", "compileall", "-q", *folders], check=True)


def ready_after(
    process: subprocess.Popen[bytes], url: str, started: float, timeout_s: float
) -> tuple[float, float]:
    """Seconds from `started` until `url` answers 200 (polled every 50 ms), and the CPU seconds the
    Anima process used by then (all its threads; a figure a busy machine inflates far less)."""
    while time.perf_counter() - started < timeout_s:
        if process.poll() is not None:
            raise RuntimeError(f"anima serve exited with {process.returncode} before it was ready")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                cpu = psutil.Process(process.pid).cpu_times()
                return time.perf_counter() - started, cpu.user + cpu.system
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"not ready after {timeout_s} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def one_run(source: Path, path: str, timeout_s: float, log: Path) -> dict[str, float]:
    times: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="anima-startup-") as tmp:
        workdir, data_dir = Path(tmp) / "cwd", Path(tmp) / "data"
        workdir.mkdir()
        for phase in ("fresh", "restart"):
            port = free_port()
            started = time.perf_counter()
            process = start(source, data_dir, workdir, port, log)
            try:
                url = f"http://127.0.0.1:{port}{path}"
                times[phase], times[f"{phase}_cpu"] = ready_after(process, url, started, timeout_s)
            finally:
                stop(process)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--source", type=Path, default=ROOT, help="checkout to run (default: this one)")
    parser.add_argument("--path", default="/health/ready", help="readiness URL path")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument(
        "--compare", type=Path, help="another checkout, run alternately with this one under the same load"
    )
    parser.add_argument("--compare-path", default="/health", help="its readiness path (older: /health)")
    parser.add_argument(
        "--nice",
        type=int,
        help="run each server (and its Postgres) at this niceness, e.g. -15 as root: on a shared"
        " machine the others' load then disturbs the figures less (a quieter machine, not this one)",
    )
    args = parser.parse_args()
    if args.nice is not None:
        NICE.extend(["nice", "-n", str(args.nice)])

    log = Path(tempfile.mkstemp(prefix="anima-startup-", suffix=".log")[1])
    variants = [("this", args.source.resolve(), args.path)]
    if args.compare is not None:
        variants.append(("compare", args.compare.resolve(), args.compare_path))
    for name, source, path in variants:
        print(f"{name}: anima serve from {source}, ready = 200 on {path}")
        compile_sources(source)
    print(f"server output in {log}")
    runs: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in variants}
    for i in range(args.runs):
        for name, source, path in variants:
            times = one_run(source, path, args.timeout, log)
            runs[name].append(times)
            print(
                f"  run {i + 1} {name:<8} fresh {times['fresh']:6.2f} s ({times['fresh_cpu']:5.2f} CPU s)"
                f"   restart {times['restart']:6.2f} s ({times['restart_cpu']:5.2f} CPU s)",
                flush=True,
            )
    for phase, target in TARGETS.items():
        medians = {}
        for name, _, _ in variants:
            values = [r[phase] for r in runs[name]]
            medians[name] = statistics.median(values)
            cpu = statistics.median(r[f"{phase}_cpu"] for r in runs[name])
            print(
                f"{phase:<8} {name:<8} median {medians[name]:6.2f} s"
                f"  (min {min(values):.2f}, max {max(values):.2f}; {cpu:.2f} CPU s)"
                f"   {medians[name] / target:.2f}x the {target:.0f} s target"
            )
        if "compare" in medians:
            print(f"{phase:<8} this / compare = {medians['this'] / medians['compare']:.2f}")


if __name__ == "__main__":
    main()
