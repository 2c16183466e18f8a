"""``manage.py check --deploy`` with the environment the image runs the server with reports only
the warning the README documents (security.W021, the HSTS preload list).

The environment is read from the deployment files themselves, so the test follows them: the
Dockerfile's ``ENV``, then ``.env.example`` as the ``.env`` compose hands the ``web`` service
(with a long random SECRET_KEY, as the README asks), then that service's ``environment`` in
docker-compose.yml, which compose applies last.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
ISSUE = re.compile(r"\(([a-z_]+\.[CEWI]\d{3})\)")

# manage.py's own entry point, less the ``.env`` beside manage.py: the image has none
# (.dockerignore), so a developer's .env must not change what is checked.
CHECK = ("import environ; environ.Env.read_env = staticmethod(lambda *a, **k: None); "
         "from django.core.management import execute_from_command_line; "
         "execute_from_command_line(['manage.py', 'check', '--deploy'])")


def dockerfile_env(text: str) -> dict[str, str]:
    """The ``ENV key=value ...`` instructions of a Dockerfile (continued lines joined)."""
    out: dict[str, str] = {}
    for line in text.replace("\\\n", " ").splitlines():
        if line.strip().startswith("ENV "):
            for pair in shlex.split(line.strip()[4:]):
                key, _, value = pair.partition("=")
                out[key] = value
    return out


def env_file(text: str) -> dict[str, str]:
    """The variables an env file sets (``key=value`` lines; comments and blanks skipped)."""
    return dict(line.split("=", 1) for line in text.splitlines()
                if line.strip() and not line.lstrip().startswith("#"))


def server_env(**changes: str) -> dict[str, str]:
    """What the ``web`` container's process sees, as docker compose builds it."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    web = compose["services"]["web"]
    assert web["env_file"] == ".env", web["env_file"]  # the copy of .env.example
    dot_env = env_file((ROOT / ".env.example").read_text())
    dot_env["SECRET_KEY"] = secrets.token_urlsafe(50)
    return {
        **{k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ},  # the shell's own
        **dockerfile_env((ROOT / "Dockerfile").read_text()),
        **dot_env,
        **{k: str(v) for k, v in web["environment"].items()},
        "DEBUG": "0",
        **changes,
    }


def deploy_issues(env: dict[str, str]) -> tuple[set[str], str]:
    result = subprocess.run([sys.executable, "-c", CHECK], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return set(ISSUE.findall(output)), output


def test_the_servers_environment_comes_from_the_deployment_files():
    # when
    env = server_env()
    # then: production settings, the compose services, a key check --deploy accepts
    assert env["DJANGO_SETTINGS_MODULE"] == "config.settings"
    assert env["DATABASE_URL"].startswith("postgres://")
    assert env["CELERY_BROKER_URL"].startswith("redis://")
    assert env["CACHE_URL"].startswith("redis://")
    assert len(env["SECRET_KEY"]) >= 50 and env["SECRET_KEY"] != "change-me"


@pytest.mark.parametrize("changes, expected", [
    # as deployed: only the documented warning
    ({}, {"security.W021"}),
    # the check is not blind: a session cookie sent over plain HTTP is reported as well
    ({"SESSION_COOKIE_SECURE": "0"}, {"security.W012", "security.W021"}),
])
def test_check_deploy_reports_only_the_documented_warning(changes, expected):
    # given: the web server's environment
    env = server_env(**changes)
    # when
    issues, output = deploy_issues(env)
    # then
    assert issues == expected, output
    assert f"identified {len(expected)} issue" in output, output


def test_the_readme_documents_the_warning():
    readme = (ROOT / "README.md").read_text()
    assert "security.W021" in readme and "SECURE_HSTS_PRELOAD" in readme
