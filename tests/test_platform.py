"""The project as a whole: settings, production checks, the embedded default."""

import os
import secrets
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.workers import start_worker, stop

ROOT = Path(__file__).resolve().parents[1]
_SERVER_VARS = (
    "DATABASE_URL",
    "CELERY_BROKER_URL",
    "MEDIA_ROOT",
    "SECRET_KEY",
    "DEBUG",
    "SESSION_COOKIE_SECURE",
    "CSRF_COOKIE_SECURE",
)


def manage(*args: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def clean_env(**extra: str) -> dict:
    env = {
        k: v for k, v in os.environ.items() if k not in _SERVER_VARS and not k.startswith("SECURE_")
    }
    env.update(extra)
    return env


def test_check_deploy_reports_only_the_documented_hsts_preload_warning(tmp_path):
    env = clean_env(
        DEBUG="0",
        SECRET_KEY=secrets.token_urlsafe(50),
        ALLOWED_HOSTS="backchannel.example.org",
        VAR_DIR=str(tmp_path),
    )
    result = manage("check", "--deploy", env=env)
    output = result.stdout + result.stderr
    assert "security.W021" in output  # explained in the README
    assert "1 issue" in output, output


def test_production_refuses_to_start_without_a_secret_key(tmp_path):
    result = manage("check", env=clean_env(DEBUG="0", VAR_DIR=str(tmp_path)))
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr


@pytest.mark.slow
def test_embedded_default_runs_a_real_worker_without_any_server(tmp_path):
    """No DATABASE_URL, no CELERY_BROKER_URL: SQLite, local files and a worker on the
    file-system broker import a corpus uploaded as a job, as in the demo."""
    env = clean_env(DEBUG="1", VAR_DIR=str(tmp_path / "var"))
    assert manage("migrate", "-v", "0", env=env).returncode == 0
    worker = start_worker("default", env)
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from django.conf import settings
        from tests.policy.test_import_jobs import corpus_zip, upload
        from policy.models import DatasetImport
        from policy.services.imports import dataset_import_request
        assert settings.DATABASES["default"]["ENGINE"].endswith("sqlite3")
        assert settings.CELERY_BROKER_URL.startswith("filesystem://")
        job = dataset_import_request(upload=upload(corpus_zip(Path({str(tmp_path)!r}), n=2)),
                                     fmt="backchannel", user=None)
        for _ in range(240):
            job.refresh_from_db()
            if job.status in ("succeeded", "failed"):
                break
            time.sleep(0.25)
        print("STATUS", job.status, job.episodes_created, job.error)
        """
    )
    try:
        result = manage("shell", "-c", script, env=env)
    finally:
        log = stop(worker)
    assert "STATUS succeeded 2" in result.stdout, result.stdout + result.stderr + log[-2000:]
    assert (tmp_path / "var" / "db.sqlite3").exists()


@pytest.mark.django_db
def test_healthz_answers_over_plain_http_even_with_ssl_redirect(client, settings):
    settings.SECURE_SSL_REDIRECT = True
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/").status_code == 301


@pytest.mark.django_db(transaction=True)
def test_a_request_after_the_database_restarted_gets_a_working_connection():
    """After a restart of PostgreSQL each web thread's kept connection is dead; the next
    request on that thread must not fail with it (it answered a 500 before the check)."""
    from django.core import signals
    from django.db import connection

    # given: a kept connection whose server side has gone, as after a restart
    connection.ensure_connection()
    killed = connection.connection.info.backend_pid
    other = connection.get_new_connection(connection.get_connection_params())
    try:
        other.autocommit = True
        other.execute("SELECT pg_terminate_backend(%s)", [killed])
    finally:
        other.close()
    # when: the next request begins (Django's handler and the rating fast path both send
    # this) and reads from the database
    signals.request_started.send(sender=None)
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        row = cursor.fetchone()
    # then: it was answered on a new connection
    assert row == (1,)
    assert connection.connection.info.backend_pid != killed
    signals.request_finished.send(sender=None)
