import os
from pathlib import Path

import pytest
from django.conf import settings as django_settings


def pytest_report_header(config: pytest.Config) -> str:
    if not config.pluginmanager.has_plugin("django") or not django_settings.configured:
        return "without Django"
    db = django_settings.DATABASES["default"]
    return f"database: {db['ENGINE']} {db.get('NAME')}; broker: {django_settings.CELERY_BROKER_URL}"


@pytest.fixture(autouse=True)
def _media_root(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """Each test gets its own empty media storage, so 'nothing changed' can be checked.
    (Pure tests of policy/ml also run without pytest-django, hence the guard.)"""
    media = tmp_path / "media"
    media.mkdir()
    if request.config.pluginmanager.has_plugin("django"):
        # FileSystemStorage drops its cached location when MEDIA_ROOT changes.
        request.getfixturevalue("settings").MEDIA_ROOT = str(media)
    return media


def media_files(root: Path | str | None = None) -> set[str]:
    root = Path(root or django_settings.MEDIA_ROOT)
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def require_real_services() -> None:
    if not os.environ.get("DATABASE_URL", "").startswith(("postgres", "postgresql")):
        pytest.fail("the suite runs against PostgreSQL and Redis: use ./scripts/test")
