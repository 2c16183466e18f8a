"""Removing the temporary folders of jobs that died or finished (a killed worker's stay
behind; its lock is released by the system)."""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

from django.utils import timezone

from feedback import export
from feedback.models import Snapshot
from policy.models import JobStatus

from .request import STALE_AFTER

logger = logging.getLogger(__name__)


def _writer_alive(lock: Path) -> bool | None:
    """Whether the process that writes a temporary folder still holds its lock (a dead one's
    lock is released by the system); None without a lock file."""
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _temp_clean(root: Path, *, own: int) -> None:
    """Remove the temporary folders no live job is writing: this job's from an earlier
    attempt, those whose writer died (its lock is free), and those of jobs that finished or
    failed."""
    live_since = timezone.now() - STALE_AFTER
    for path in root.glob(".tmp-*"):
        if path.suffix == ".lock":
            continue
        lock = path.with_name(path.name + ".lock")
        sid = path.name.split("-")[1] if path.name.count("-") >= 2 else ""
        alive = _writer_alive(lock)
        if alive is None:  # no lock: judge by the job's row
            alive = sid.isdigit() and Snapshot.objects.filter(
                pk=int(sid), status=JobStatus.RUNNING, started_at__gte=live_since).exists()
        if not alive or sid == str(own):
            logger.info("snapshot %s: removing the leftover folder %s", own, path.name)
            export.folder_remove(path)
            lock.unlink(missing_ok=True)
    for lock in root.glob(".tmp-*.lock"):
        if not lock.with_suffix("").exists():
            lock.unlink(missing_ok=True)
