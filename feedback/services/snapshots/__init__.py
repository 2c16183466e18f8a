"""Snapshots: a filtered set of judgments frozen as a content-hashed folder.

``snapshot_request`` is the one way in (the API, the page, ``export_preferences`` and the
retraining round call it): it checks the filters against what the user may see, refuses what
would be empty or meaningless, and records one job per set of filters in progress (the partial
unique constraint on ``filter_key`` keeps it so under concurrent requests). A ``default``
worker runs ``snapshot_make``: it claims the job (``QUEUED -> RUNNING``), streams the judgments
in id order a chunk at a time into a temporary folder under ``MEDIA_ROOT/snapshots/`` (the
files are ``feedback.export``'s), hashes the folder and moves it into place whole as
``snapshots/<content hash>/``. A folder with that hash already there is the same bytes, and is
kept. A job that fails leaves nothing listed; the temporary folder of one that was killed is
removed by the next run.

Memory stays flat in the number of judgments: the rows come through a server-side cursor
(on PostgreSQL one tab-separated line per judgment, parsed by Arrow a chunk at a time), only
what they refer to is held (items, candidates, clips, episodes, raters: arrays of a few tens of
bytes each), and the Parquet files are written a row group at a time. The ``ratings`` and
``raters`` configs come from ``feedback.services.ratings.campaign_ratings`` and
``feedback.services.qc.rater_table``, which read the campaigns whole; they run first, so
their memory is given back before the stream starts.
"""

from .filters import DEFAULT_TEST_FRACTION, QC_POLICIES, SnapshotError, source_labels
from .make import snapshot_make
from .reads import snapshot_folder, snapshot_get_for, snapshot_list_for, snapshots_root
from .request import snapshot_request

__all__ = [
    "DEFAULT_TEST_FRACTION",
    "QC_POLICIES",
    "SnapshotError",
    "snapshot_folder",
    "snapshot_get_for",
    "snapshot_list_for",
    "snapshot_make",
    "snapshot_request",
    "snapshots_root",
    "source_labels",
]
