"""CPU seconds of a process tree from /proc, counting what other ways of reading miss.

`/proc/<pid>/stat` utime + stime is the whole process: every thread's time, including threads that have
exited (the kernel folds them into the process). cutime + cstime is every child that exited and was
reaped. Summing both over the live tree (Postgres forks a backend per connection, and they come and go)
gives a total whose difference between two reads is exactly the CPU spent in between.
"""

from __future__ import annotations

import os
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds of the process and its reaped children), or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) ": field 3 (state) is fields[0]
    ticks = sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime (fields 14-17)
    return int(fields[1]), ticks / TICK


def tree_cpu_s(root: int) -> float:
    """CPU seconds of `root` and every live descendant (each with its reaped children)."""
    children: dict[int, list[int]] = {}
    seconds: dict[int, float] = {}
    for entry in os.scandir("/proc"):
        stat = _stat(int(entry.name)) if entry.name.isdigit() else None
        if stat is not None:
            children.setdefault(stat[0], []).append(int(entry.name))
            seconds[int(entry.name)] = stat[1]
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += seconds.get(pid, 0.0)
        todo += children.get(pid, [])
    return total


def postmaster_pid(pgdata: Path) -> int:
    """The postmaster of a data directory (the first line of its postmaster.pid)."""
    return int((pgdata / "postmaster.pid").read_text().split()[0])
