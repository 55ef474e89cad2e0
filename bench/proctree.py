"""What a process tree has used, read from /proc (Linux): for the benchmarks, whose jobs
start Ray's processes (GCS, raylet, workers) as their descendants."""

from __future__ import annotations

import os


def tree_cpu_seconds(root: int | None = None) -> float:
    """CPU time used so far by this process and all its descendants (Ray's GCS,
    raylet and workers of a local cluster), live ones and reaped ones alike."""
    root = os.getpid() if root is None else root
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # exited meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()
        pid = int(entry)
        parents[pid] = int(fields[1])
        # utime + stime + cutime + cstime (children's time once they are reaped)
        ticks[pid] = sum(int(v) for v in fields[11:15])
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += ticks.get(pid, 0)
        stack.extend(children.get(pid, ()))
    return total / os.sysconf("SC_CLK_TCK")


def cmdline(pid: int) -> str:
    """A process's command line, "" once it has exited."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""
