"""The feedback app's Celery tasks, one module per sub-domain (imported here for discovery)."""

from feedback.tasks_qc import *  # noqa: F403
from feedback.tasks_rounds import *  # noqa: F403
from feedback.tasks_snapshots import *  # noqa: F403
