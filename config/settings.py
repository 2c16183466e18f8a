"""Settings, twelve-factor style: everything that differs between machines comes from the
environment (or a ``.env`` file beside ``manage.py``); see ``.env.example`` for the full list.

With no ``DATABASE_URL`` and no ``CELERY_BROKER_URL`` the project runs on the *embedded default*:
SQLite and local files, and Celery on a file-system broker that needs no server.
"""

from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
if (BASE_DIR / ".env").is_file():
    environ.Env.read_env(BASE_DIR / ".env")

# Where the embedded default keeps its SQLite file, media and broker folders.
VAR_DIR = Path(env("VAR_DIR", default=str(BASE_DIR / "var")))

DEBUG = env.bool("DEBUG", default=False)

# A development key exists only where DEBUG is on; production must bring its own.
_DEV_SECRET_KEY = "django-insecure-development-only-backchannel-key-never-use-in-production"  # noqa: S105
SECRET_KEY = env("SECRET_KEY", default=_DEV_SECRET_KEY if DEBUG else None)
if not SECRET_KEY:
    raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off (see .env.example)")

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI and ReDoc served from here, not from a CDN
    # Dependency direction: rendering <- policy <- annotation <- feedback.
    "rendering",
    "policy",
    "annotation",
    "feedback",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "config.security.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}")}
DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("DB_CONN_MAX_AGE", default=60))
# A kept connection is checked (one round trip) before the first query of each request that
# reuses it: after the database restarts, every idle thread's connection is dead, and without
# the check each such thread answered its next request with a 500 (seconds after the database
# was back, measured by benchmarks/faults).
DATABASES["default"].setdefault("CONN_HEALTH_CHECKS", True)
if env.bool("DB_POOL", default=False) and DATABASES["default"]["ENGINE"].endswith("postgresql"):
    # A pool (psycopg_pool) instead of one kept connection per thread: for a server that runs
    # many requests at once in one process (gunicorn's gevent worker, as the rating benchmark
    # runs it; docs/annotation.md, Performance).
    from psycopg_pool import ConnectionPool

    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 2, "max_size": env.int("DB_POOL_SIZE", default=8), "timeout": 10,
        # the same check as CONN_HEALTH_CHECKS, on each connection the pool hands out
        "check": ConnectionPool.check_connection}
    DATABASES["default"]["CONN_MAX_AGE"] = 0
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # The embedded default: a web process and a worker share one file, so wait on locks.
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("timeout", 30)
    DATABASES["default"]["CONN_MAX_AGE"] = 0
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Shared state between web processes: the sign-in and invite throttles' counts. Redis in
# production (docker-compose.yml sets CACHE_URL=redis://redis:6379/1), so every process counts
# together; local memory by default, which counts per process.
CACHES = {"default": env.cache_url("CACHE_URL", default="locmemcache://")}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# Sign-in for researchers and raters (the admin's form is for staff); pages that need a user send
# people there.
LOGIN_URL = "annotation:sign-in"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "annotation:sign-in"
# Failed sign-ins (this form and the admin's) are counted per username and per client address in
# the cache, in windows of SIGN_IN_WINDOW_S; past either limit, attempts are refused (429) until
# the window ends. A shared address (a lab, a NAT) has many people behind it, hence its larger
# limit. SIGN_IN_PROXIES: the proxies in front of the site that append to X-Forwarded-For (the
# client's address is read that many entries from its end; 0: the connection's address).
SIGN_IN_MAX_FAILURES = env.int("SIGN_IN_MAX_FAILURES", default=5)
SIGN_IN_MAX_FAILURES_PER_ADDRESS = env.int("SIGN_IN_MAX_FAILURES_PER_ADDRESS", default=20)
SIGN_IN_WINDOW_S = env.int("SIGN_IN_WINDOW_S", default=900)
SIGN_IN_PROXIES = env.int("SIGN_IN_PROXIES", default=0)
# Accounts made by opening an invite link while signed out (annotation/services/enrollment.py),
# counted in the same cache per client address (read as the sign-in throttle reads it) and per
# link, in fixed windows of INVITE_WINDOW_S; past either limit the link answers 429 and makes
# nothing until the window ends. Reopening a link (the same crowd participant id, or a signed-in
# account) makes no account and is not counted. A lab or a NAT puts many people behind one
# address; a crowd platform sends one study's participants through one link, so raise the
# link's limit for a study that recruits faster. 0 switches a limit off.
INVITE_MAX_ACCOUNTS_PER_ADDRESS = env.int("INVITE_MAX_ACCOUNTS_PER_ADDRESS", default=20)
INVITE_MAX_ACCOUNTS_PER_LINK_PER_WINDOW = env.int("INVITE_MAX_ACCOUNTS_PER_LINK_PER_WINDOW",
                                                  default=300)
INVITE_WINDOW_S = env.int("INVITE_WINDOW_S", default=3600)
if INVITE_WINDOW_S < 1:
    raise ImproperlyConfigured("INVITE_WINDOW_S must be at least 1 (seconds)")

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = env.path("STATIC_ROOT", default=str(VAR_DIR / "static"))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # Compressed, cache-busting static files served by the web process itself (WhiteNoise).
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if env.bool("STATIC_MANIFEST", default=not DEBUG)  # needs collectstatic first
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
MEDIA_URL = "media/"
MEDIA_ROOT = env.path("MEDIA_ROOT", default=str(VAR_DIR / "media"))

# --- security (production defaults; all relaxed automatically when DEBUG is on) --------------
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=not DEBUG)
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]  # probed over plain HTTP from inside the host
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=not DEBUG)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=not DEBUG)
# Joining the browsers' preload list is the domain owner's decision, so it stays opt-in.
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
if env.bool("USE_X_FORWARDED_PROTO", default=False):
    # Only behind a proxy that sets this header itself (and strips it from clients).
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
X_FRAME_OPTIONS = "DENY"

# --- uploads and imports ----------------------------------------------------------------------
# Any single file inside an imported corpus (or the uploaded archive itself) above this is refused.
IMPORT_MAX_FILE_BYTES = env.int("IMPORT_MAX_FILE_BYTES", default=512 * 1024**2)
# The sum of all files of one import (guards against zip bombs).
IMPORT_MAX_TOTAL_BYTES = env.int("IMPORT_MAX_TOTAL_BYTES", default=16 * 1024**3)
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024**2  # larger uploads stream to a temporary file

# --- rendering and the policy ----------------------------------------------------------------
# A FLAME model file the user provides (the official files may not be redistributed).
FLAME_MODEL_PATH = env("FLAME_MODEL_PATH", default="")
# pyrender's OpenGL platform: "osmesa" (CPU) or "egl" (GPU). Empty: chosen by the renderer.
RENDER_GL_PLATFORM = env("RENDER_GL_PLATFORM", default="")
# Lifetime of signed clip URLs shown to raters.
CLIP_URL_MAX_AGE_S = env.int("CLIP_URL_MAX_AGE_S", default=900)
# Pretrained models (vision encoders, language-model backbones) are local directories, never
# downloaded: a bare name such as "dinov2-small" is looked up in this folder (policy/ml/hf.py).
POLICY_MODEL_DIR = env("POLICY_MODEL_DIR", default="")
# Per-frame speaker video features, by content hash (policy/ml/video.py FeatureStore): a local
# cache that can be deleted. Empty: MEDIA_ROOT/features.
POLICY_FEATURE_DIR = env("POLICY_FEATURE_DIR", default="")
# The rating calls' database work in PostgreSQL functions (annotation/sql/, one file each; an
# answer takes two calls, next and heartbeat one). Off: the portable statements, as on SQLite.
RATING_DB_FUNCTIONS = env.bool("RATING_DB_FUNCTIONS", default=True)
# The rate page's calls answered in front of Django (annotation/fastpath.py).
RATING_FAST_PATH = env.bool("RATING_FAST_PATH", default=True)
# Leases (annotation/services/scheduling.py). A heartbeat moves a lease's expiry a campaign's
# lease_seconds ahead, but never past LEASE_MAX_AGE_S after it was granted: a page that
# heartbeats and never answers loses its items then. A lease that ends without an answer is a
# lapse; a rater with LEASE_LAPSES_BEFORE_COOL_DOWN lapses in a campaign and no answer there
# since the first of them is given no new item until LEASE_COOL_DOWN_S after the latest (the
# items already held can still be answered, and an answer ends the cool-down). 0 switches the
# cool-down off.
LEASE_MAX_AGE_S = env.int("LEASE_MAX_AGE_S", default=1800)
LEASE_LAPSES_BEFORE_COOL_DOWN = env.int("LEASE_LAPSES_BEFORE_COOL_DOWN", default=6)
LEASE_COOL_DOWN_S = env.int("LEASE_COOL_DOWN_S", default=1800)
if LEASE_MAX_AGE_S < 1:
    raise ImproperlyConfigured("LEASE_MAX_AGE_S must be at least 1 (seconds)")

# --- quality control (feedback/services/qc/__init__.py documents every rule) ------------------
# When a rater is flagged (kept, shown for review) or excluded (served nothing more, left out
# of exports). A rule applies once its own minimum count is reached. Any key can be changed
# from the environment: FEEDBACK_QC='{"gold_accuracy_exclude": 0.75}' (JSON, merged over these).
FEEDBACK_QC = {
    "batch": 200,  # new judgments in an active campaign that start a run (checked every minute)
    "min_answers": 20,  # no decision about a rater with fewer judgments
    "min_gold": 10,  # gold answers before gold accuracy counts ...
    "gold_accuracy_flag": 0.8,  # ... flagged below
    "gold_accuracy_exclude": 0.7,  # ... excluded below
    "min_catch": 3,  # catch answers before catch accuracy flags ...
    "catch_accuracy_flag": 0.8,  # ... below this
    "min_catch_exclude": 6,  # catch answers before it excludes ...
    "catch_accuracy_exclude": 0.5,  # ... below this
    "min_repeats": 3,  # hidden repeats before consistency counts ...
    "repeat_consistency_flag": 0.6,  # ... flagged below
    "min_decisive": 10,  # left/right presses before side bias counts; flagged when both
    "side_bias_p": 0.001,  # the two-sided binomial test's p is below this and
    "side_bias_share": 0.8,  # the pressed side's share is above this
    "fast_fraction": 0.1,  # an answer is too fast under this fraction of the clip's length;
    "fast_share_flag": 0.3,  # flagged when more than this share of answers is too fast
    "min_regular": 10,  # regular comparisons before agreement and reliability count
    "loo_agreement_flag": 0.5,  # agreement with the others' majority: flagged below
    "reliability_flag": 0.5,  # reliability (EM jointly with the items): flagged below ...
    "reliability_exclude": 0.15,  # ... excluded below
} | env.json("FEEDBACK_QC", default={})

# The licence a snapshot's dataset card declares (a Hugging Face licence id, e.g. cc-by-nc-4.0).
SNAPSHOT_LICENSE = env("SNAPSHOT_LICENSE", default="other")

# --- Celery -----------------------------------------------------------------------------------
CELERY_BROKER_URL = env("CELERY_BROKER_URL", default="filesystem://")
EMBEDDED_BROKER = CELERY_BROKER_URL.startswith("filesystem://")
if EMBEDDED_BROKER:
    _broker_dir = Path(env("CELERY_FILESYSTEM_BROKER_DIR", default=str(VAR_DIR / "celery")))
    for _sub in ("queue", "processed", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
else:
    # Redis redelivers unacknowledged tasks after the visibility timeout: it must exceed the
    # longest task time limit, or a long GPU job would run twice.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", default=12 * 3600)
    }
CELERY_RESULT_BACKEND = env("CELERY_RESULT_BACKEND", default=None)
CELERY_TASK_IGNORE_RESULT = True  # job state lives in database rows, not in a result backend
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE = {
    "reap-stale-imports": {
        "task": "policy.tasks.reap_stale_imports_task",
        "schedule": 600.0,
    },
    "requeue-stale-clips": {
        "task": "rendering.tasks.requeue_stale_clips_task",
        "schedule": env.float("CLIP_REAP_EVERY_S", default=60.0),
    },
    "expire-leases": {
        "task": "annotation.tasks.expire_leases_task",
        "schedule": 60.0,
    },
    "reprioritise-campaigns": {
        "task": "annotation.tasks.reprioritise_campaigns_task",
        "schedule": 30.0,
    },
    "quality-control": {  # a run for campaigns with FEEDBACK_QC["batch"] new judgments
        "task": "feedback.tasks_qc.qc_enqueue_due_task",
        "schedule": 60.0,
    },
    "requeue-stale-round-steps": {  # a step whose worker died resumes from its checkpoints
        "task": "feedback.tasks_rounds.round_reap_task",
        "schedule": env.float("ROUND_REAP_EVERY_S", default=60.0),
    },
    "scheduled-rounds": {  # campaigns with a RoundSchedule and enough new trusted judgments
        "task": "feedback.tasks_rounds.round_schedule_task",
        "schedule": 300.0,
    },
}
# A running round step renews its heartbeat every few seconds; one silent for this long has lost
# its worker and is queued again.
ROUND_STEP_STALE_S = env.int("ROUND_STEP_STALE_S", default=300)
# A rendering clip writes a heartbeat at least every 10 s; a running clip silent for this long
# has lost its worker and is queued again by the beat job (every CLIP_REAP_EVERY_S). Redis
# itself would redeliver a dead worker's task only after the visibility timeout.
CLIP_SILENT_S = env.int("CLIP_SILENT_S", default=120)

REST_FRAMEWORK = {
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # DRF's three, JSON's bounded in depth (a deeply nested body is a 400, not a 500)
    "DEFAULT_PARSER_CLASSES": [
        "annotation.parsers.BoundedJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_THROTTLE_RATES": {},
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Backchannel API",
    "DESCRIPTION": "Rating campaigns, leases and judgments. Authenticate with a session "
                   "(sign in through the site); unsafe methods need the CSRF token.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
