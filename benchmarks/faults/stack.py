"""The platform under test, every part a process of this benchmark's own: a PostgreSQL cluster
and a Redis server in a temporary folder on ports of their own (never the machine's shared
ones), gunicorn as the Dockerfile runs it, a Celery worker and Celery beat. Each can be killed
or restarted, as a supervisor (systemd, Docker's restart policy) would restart it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.rating.servers import ROOT, _descendants

PG_BIN = Path("/usr/local/bin")


def _wait_port(port: int, timeout: float) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def _as_postgres(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: there, its commands run as the ``postgres`` user."""
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", "postgres", "--", *argv]


class PrivatePostgres:
    """``initdb`` into ``folder``, trust authentication, listening on 127.0.0.1:``port`` only."""

    def __init__(self, folder: Path, port: int) -> None:
        self.root = folder / "postgres"
        self.data, self.port = self.root / "data", port
        self.log = self.root / "postgres.log"
        self.url = f"postgres://postgres@127.0.0.1:{port}/backchannel_faults"

    def _ctl(self, *args: str) -> None:
        subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), *args]),
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start(self) -> None:
        if not self.data.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            if os.geteuid() == 0:
                import shutil

                self.root.parent.chmod(0o755)  # (a temporary folder is the owner's only)
                shutil.chown(self.root, "postgres", "postgres")
            subprocess.run(_as_postgres([str(PG_BIN / "initdb"), "-D", str(self.data),
                                         "-U", "postgres", "--auth=trust", "-E", "UTF8",
                                         "--no-instructions"]),
                           check=True, stdout=subprocess.DEVNULL)
        # Enough connections for 4 web processes x 8 threads, the worker, beat and this process.
        opts = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data} "
                "-c max_connections=120 -c shared_buffers=128MB")
        self._ctl("-o", opts, "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-m", mode, "-w", "-t", "60", "stop")

    def restart(self) -> None:
        """As a crash and a supervisor's restart: ``immediate`` stops every backend at once
        (no checkpoint; the next start replays the WAL), then a start."""
        self.stop("immediate")
        self.start()


class PrivateRedis:
    """``redis-server`` on 127.0.0.1:``port``; its append-only file in ``folder``, as the
    compose file runs Redis (``--appendonly yes``): a restart keeps the queued tasks."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder, self.port = folder / "redis", port
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.folder), "--appendonly", "yes", "--save", "",
             "--protected-mode", "yes", "--logfile", str(self.folder / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port, 30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()


class CeleryProcess:
    """A Celery worker (or beat) in a session of its own, so that a kill -9 takes the whole
    process group, pool processes included, as when a container dies."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name, self.argv, self.env = name, argv, env
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept by the child
        self.proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "config",
                                      *self.argv], cwd=ROOT, env={**os.environ, **self.env},
                                     stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        self.starts += 1

    def kill(self) -> None:
        """kill -9 of the worker and every process it started."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


def worker(env: dict[str, str], log_dir: Path) -> CeleryProcess:
    """The worker of the compose file (``-Q default,render``, two processes) serving the gpu
    queue too: the round's steps run on this machine's CPU."""
    return CeleryProcess("worker", ["worker", "-Q", "default,render,gpu", "--concurrency", "2",
                                    "--prefetch-multiplier", "1", "-n", "faults@%h",
                                    "-l", "info"], env, log_dir)


def beat(env: dict[str, str], log_dir: Path) -> CeleryProcess:
    return CeleryProcess("beat", ["beat", "-l", "info", "-s",
                                  str(log_dir / "celerybeat-schedule")], env, log_dir)


def gunicorn_workers(master_pid: int) -> list[int]:
    return _descendants(master_pid)
