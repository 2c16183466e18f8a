"""Real Celery worker processes for the tests whose behaviour is the worker's."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parents[1]


def url_of_test_database() -> str:
    s = connection.settings_dict
    host = s.get("HOST") or "127.0.0.1"
    port = s.get("PORT") or 5432
    auth = s["USER"] + (f":{s['PASSWORD']}" if s.get("PASSWORD") else "")
    return f"postgres://{auth}@{host}:{port}/{s['NAME']}"


def worker_env(env: dict, **extra: str) -> dict:
    """The environment of a worker that sees this test's database and media storage."""
    return {
        **env,
        "DATABASE_URL": url_of_test_database(),
        "MEDIA_ROOT": settings.MEDIA_ROOT,
        **extra,
    }


def start_worker(queue: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "config",
            "worker",
            "-Q",
            queue,
            "-P",
            "solo",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-l",
            "info",
            "-n",
            f"t{uuid.uuid4().hex[:8]}@%h",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_until_finished(row, worker: subprocess.Popen, finished: tuple, timeout: float) -> None:
    """Poll ``row.status`` until it is one of ``finished``, the worker dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row.refresh_from_db()
        if row.status in finished or worker.poll() is not None:
            return
        time.sleep(0.3)


def stop(worker: subprocess.Popen) -> str:
    worker.terminate()
    return worker.communicate(timeout=30)[0]
