"""Per-frame features of the speaker videos of a dataset, from a pretrained vision encoder.

``dataset_video_features`` runs on a ``gpu`` worker (``compute_video_features_task``) or in this
process (``manage.py video_features``). Features live in a :class:`~policy.ml.video.FeatureStore`
under ``POLICY_FEATURE_DIR`` (default ``MEDIA_ROOT/features``), keyed by the hash of the video
bytes, the encoder, the frame rate, the image size and the face box, so a re-run computes only
what is missing and a run with another encoder adds its own features beside the first's.
torch is imported inside the functions, never when this module is imported.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import transaction

from policy.models import Dataset, Episode
from rendering import blobs

if TYPE_CHECKING:
    from policy.ml.video import FeatureStore

logger = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]  # (episodes done, episodes with a video)


class VideoFeatureCounts(TypedDict):
    computed: int  # episodes whose features were decoded and encoded by this run
    cached: int  # episodes whose features were already stored
    without_video: int  # episodes with no speaker video
    failed: int  # episodes whose video could not be used (see errors)
    errors: list[str]  # one line per failed episode: which, and why


def feature_store() -> FeatureStore:
    """The store of video features: ``POLICY_FEATURE_DIR``, else ``MEDIA_ROOT/features``."""
    from policy.ml.video import FeatureStore

    return FeatureStore(settings.POLICY_FEATURE_DIR or Path(settings.MEDIA_ROOT) / "features")


@contextmanager
def episode_video_file(episode: Episode) -> Iterator[Path]:
    """The episode's stored video as a local file: in place on the file system, else a
    temporary copy (object storage) removed afterwards."""
    from policy.ml.errors import PolicyDataError

    name = blobs.blob_name(episode.video_sha, episode.video_ext)
    if not default_storage.exists(name):
        raise PolicyDataError(f"its stored video {name} is missing")
    try:
        local = default_storage.path(name)
    except NotImplementedError:
        local = None
    if local is not None:
        yield Path(local)
        return
    with tempfile.NamedTemporaryFile(suffix=f".{episode.video_ext}") as tmp:
        with default_storage.open(name, "rb") as src:
            shutil.copyfileobj(src, tmp)
        tmp.flush()
        yield Path(tmp.name)


def dataset_video_features(
    dataset: Dataset,
    encoder_dir: str,
    *,
    device: str = "auto",
    progress: ProgressFn | None = None,
) -> VideoFeatureCounts:
    """Compute the features of every episode with a speaker video that the store lacks.

    ``encoder_dir``: a DINOv2 or SigLIP model directory, absolute or a name under
    ``POLICY_MODEL_DIR``. Each episode's video is decoded at the episode's frame rate, cropped
    to ``meta["face_box"]`` (x, y, w, h) when the corpus records one. An episode whose video
    cannot be used is counted as failed with the reason and the others go on; a model directory
    that cannot be used raises ``ModelDirError`` before anything is computed.
    ``progress(done, total)`` is called after each episode with a video.
    """
    from policy.ml.errors import PolicyDataError
    from policy.ml.hf import resolve_model_dir
    from policy.ml.video import VisionEncoder, box_ints, feature_key, features_for

    started = time.perf_counter()
    path = resolve_model_dir(encoder_dir, root=settings.POLICY_MODEL_DIR)
    encoder = VisionEncoder.from_dir(path, device=device)
    logger.info(
        "dataset %s: vision encoder %s (%s, %d-d, %d px, sha %s) loaded in %.1f s",
        dataset.pk,
        encoder.name,
        encoder.kind,
        encoder.dim,
        encoder.image_size,
        encoder.sha256[:12],
        time.perf_counter() - started,
    )
    store = feature_store()
    episodes = dataset.episodes.order_by("key")
    counts: VideoFeatureCounts = {
        "computed": 0,
        "cached": 0,
        "without_video": episodes.filter(video_sha="").count(),
        "failed": 0,
        "errors": [],
    }
    with_video = list(
        episodes.exclude(video_sha="").only(
            "pk", "key", "fps", "n_frames", "video_sha", "video_ext", "meta"
        )
    )
    started = time.perf_counter()
    for done, ep in enumerate(with_video, start=1):
        box = (ep.meta or {}).get("face_box")
        try:
            box = box_ints(box, where="meta['face_box']") if box is not None else None
            key = feature_key(
                video_sha=ep.video_sha,
                encoder_sha=encoder.sha256,
                fps=ep.fps,
                image_size=encoder.image_size,
                box=box,
            )
            if key in store:
                counts["cached"] += 1
            else:
                with episode_video_file(ep) as video:
                    features_for(video, ep.video_sha, encoder, ep.fps, ep.n_frames, box, store)
                counts["computed"] += 1
        except PolicyDataError as exc:
            counts["failed"] += 1
            counts["errors"].append(f"episode {ep.key!r} (id {ep.pk}): {exc}")
            logger.warning("dataset %s episode %s: no video features: %s", dataset.pk, ep.pk, exc)
        if progress is not None:
            progress(done, len(with_video))
    logger.info(
        "dataset %s: video features with %s: %d computed, %d cached, %d without video, "
        "%d failed in %.1f s",
        dataset.pk,
        encoder.name,
        counts["computed"],
        counts["cached"],
        counts["without_video"],
        counts["failed"],
        time.perf_counter() - started,
    )
    return counts


def dataset_video_features_request(*, dataset: Dataset, encoder_dir: str) -> None:
    """Queue the computation on a ``gpu`` worker (after the caller's transaction commits)."""
    from policy.tasks import compute_video_features_task

    transaction.on_commit(lambda: compute_video_features_task.delay(dataset.pk, encoder_dir))
