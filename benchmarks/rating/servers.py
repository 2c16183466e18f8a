"""The servers measured (runserver and gunicorn configurations, each started as a process of its own
on this machine) and the CPU of every party, read from /proc."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerConfig:
    name: str
    kind: str  # runserver | sync | gthread | gevent
    workers: int = 1
    threads: int = 1
    note: str = ""
    env: dict[str, str] = field(default_factory=dict)

    def argv(self, port: int) -> list[str]:
        py = sys.executable
        if self.kind == "runserver":
            return [py, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"]
        argv = [py, "-m", "gunicorn", "benchmarks.rating_settings:application",
                "--bind", f"127.0.0.1:{port}", "--workers", str(self.workers),
                "--worker-class", self.kind,
                "--log-level", "warning", "--timeout", "60", "--graceful-timeout", "5"]
        if self.kind == "gthread":
            argv += ["--threads", str(self.threads)]
        if self.kind == "gevent":
            argv += ["--worker-connections", "1000"]
        return argv


def configurations(cpus: int) -> dict[str, ServerConfig]:
    """The configurations the sweep compares, by name. The first two are what a user starts
    without tuning; the last is measured in full when there is no sweep (the sweep found it
    fastest in three of its last five recorded runs, gthread with 8 threads in the others)."""
    configs = [
        ServerConfig("runserver", "runserver", note="manage.py runserver (threaded)"),
        ServerConfig("gunicorn-default", "sync", 1, note="gunicorn's default: 1 sync worker"),
        ServerConfig(f"gunicorn-sync-{cpus + 1}", "sync", cpus + 1),
        ServerConfig(f"gunicorn-sync-{2 * cpus + 1}", "sync", 2 * cpus + 1,
                     note="gunicorn's advice: 2 x cores + 1"),
        ServerConfig(f"gunicorn-gthread-{cpus}x4", "gthread", cpus, 4),
        ServerConfig(f"gunicorn-gthread-{cpus}x8", "gthread", cpus, 8),
        ServerConfig(f"gunicorn-gevent-{cpus}", "gevent", cpus, env={"DB_POOL": "1"},
                     note="gevent worker, connections from a pool (DB_POOL=1)"),
    ]
    return {c.name: c for c in configs}


class Server:
    def __init__(self, config: ServerConfig, env: dict[str, str], log_dir: Path) -> None:
        self.config, self.env = config, env
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = open(log_dir / f"{config.name}.log", "wb")  # noqa: SIM115
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Server:
        import httpx

        self.proc = subprocess.Popen(self.config.argv(self.port), cwd=ROOT,
                                     env={**os.environ, **self.env, **self.config.env},
                                     stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.config.name} exited; see {self.log.name}")
            try:
                if httpx.get(f"{self.base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            raise RuntimeError(f"{self.config.name} did not answer /healthz in 60 s")
        # Every gunicorn worker imports Django lazily: warm them all before measuring.
        for _ in range(4 * max(1, self.config.workers)):
            httpx.get(f"{self.base}/healthz", timeout=5)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM if self.config.kind != "runserver"
                                  else signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def pids(self) -> list[int]:
        return [self.proc.pid, *_descendants(self.proc.pid)] if self.proc else []


_TICK = os.sysconf("SC_CLK_TCK")


def proc_stat(pid: int) -> tuple[str, int, float, float] | None:
    """(comm, ppid, own CPU s, reaped children's CPU s)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1: raw.rindex(")")]
    f = raw[raw.rindex(")") + 2:].split()
    return comm, int(f[1]), (int(f[11]) + int(f[12])) / _TICK, (int(f[13]) + int(f[14])) / _TICK


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _descendants(root: int) -> list[int]:
    parent = {}
    for pid in _all_pids():
        st = proc_stat(pid)
        if st:
            parent[pid] = st[1]
    out, frontier = [], {root}
    while frontier:
        kids = {p for p, pp in parent.items() if pp in frontier}
        out += sorted(kids)
        frontier = kids
    return out


def _machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = f[3] + f[4]
    return (sum(f[:8]) - idle) / _TICK, sum(f[:8]) / _TICK


def cpu_snapshot(server: Server) -> dict:
    server_cpu = 0.0
    for pid in server.pids():
        st = proc_stat(pid)
        if st:
            server_cpu += st[2] + st[3]
    pg = 0.0
    for pid in _all_pids():
        st = proc_stat(pid)
        if not st or not st[0].startswith("postgres"):
            continue
        parent = proc_stat(st[1])
        is_master = parent is None or not parent[0].startswith("postgres")
        pg += st[2] + (st[3] if is_master else 0.0)  # reaped backends count in the postmaster
    t = os.times()
    busy, total = _machine_busy()
    return {"server": server_cpu, "postgres": pg, "load_generator": t.user + t.system,
            "machine_busy": busy, "machine_total": total, "wall": time.monotonic()}


def cpu_split(before: dict, after: dict) -> dict:
    wall = after["wall"] - before["wall"]
    d = {k: (after[k] - before[k]) / wall for k in before if k != "wall"}
    cores = d.pop("machine_total")
    busy = d.pop("machine_busy")
    mine = d["server"] + d["postgres"] + d["load_generator"]
    out = {k: round(v, 3) for k, v in d.items()}
    out["other_processes"] = round(max(0.0, busy - mine), 3)
    out["machine_busy"] = round(busy, 3)
    out["machine_cores"] = round(cores, 2)
    out["unit"] = "cores (CPU seconds per second of wall time)"
    return out

