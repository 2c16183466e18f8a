from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from django.core.files.storage import default_storage
from django.db.models import Count, QuerySet

from policy.models import CandidateJob, Dataset, Episode, PolicyVersion
from policy.plots import line_plot_svg
from rendering import blobs
from rendering.layouts import get_layout

_SENTIMENT_COLOURS = {"positive": "#2ca02c", "negative": "#d62728", "neutral": "#999999"}


def dataset_list() -> QuerySet[Dataset]:
    return Dataset.objects.annotate(episode_count=Count("episodes")).order_by("name")


def episode_plot_svgs(episode: Episode) -> list[str]:
    """Listener (and speaker) curves of an episode: affect, head pitch and jaw, with the
    transcript's sentences shaded by sentiment where the corpus records them."""
    layout = get_layout(episode.dataset.face_model)
    spans = [
        (
            s["start"],
            s["end"],
            _SENTIMENT_COLOURS.get(s.get("sentiment", ""), "#999"),
            f"{s.get('sentiment', '')}: {s.get('text', '')}",
        )
        for s in episode.meta.get("sentences", [])
    ]
    plots = []
    streams = [
        ("listener", episode.listener_sha),
        ("reference", episode.reference_sha),
        ("speaker", episode.speaker_sha),
    ]
    for role, sha in streams:
        if not sha:
            continue
        coeffs = blobs.load_array(sha)  # (T, D)
        plots.append(
            line_plot_svg(
                _summary_curves(coeffs, layout.name),
                fps=episode.fps,
                title=f"{role}: {episode.dataset.name}/{episode.key}",
                spans=spans,
            )
        )
    return plots


def _summary_curves(coeffs: np.ndarray, layout_name: str) -> dict[str, np.ndarray]:
    layout = get_layout(layout_name)
    if layout.name == "builtin":

        def col(name: str) -> np.ndarray:
            return coeffs[:, layout.index(name)]

        return {
            "smile": (col("smile_left") + col("smile_right")) / 2,
            "concern": (col("brow_inner_raise") + col("brow_lower") + col("mouth_corner_depress"))
            / 3,
            "blink": col("eye_blink"),
            "head pitch": col("head_pitch"),
            "jaw": col("jaw_open"),
        }
    expr = coeffs[:, layout.expression_indices]
    pose = coeffs[:, layout.pose_indices]
    return {
        "expr[0]": expr[:, 0],
        "expr[1]": expr[:, 1],
        "expr energy": np.linalg.norm(expr, axis=1) / np.sqrt(expr.shape[1]),
        "pose[0]": pose[:, 0],
    }


@dataclass
class EpisodeArrays:
    """An episode with its arrays loaded: what the training and sampling code reads
    (``policy.ml.data.episode_from`` accepts it). Plain NumPy: no torch here."""

    key: str
    split: str
    fps: float
    speaker: np.ndarray | None
    listener: np.ndarray
    audio: np.ndarray | None
    audio_sample_rate: int | None
    transcript: list[dict] | None
    meta: dict
    pk: int
    reference: np.ndarray | None = None  # the rule-following listener, where the corpus keeps one
    # The speaker video as a local file (decoded by policy.ml.video where needed, never here);
    # None without a video, or when the storage keeps files elsewhere than on this disk.
    video_path: str | None = None
    face_box: tuple[int, int, int, int] | None = None  # (x, y, w, h) from meta["face_box"]


def _video_path(ep: Episode) -> str | None:
    if not ep.video_sha:
        return None
    try:
        return default_storage.path(blobs.blob_name(ep.video_sha, ep.video_ext))
    except NotImplementedError:  # object storage: copy it out first (episode_video_file)
        return None


def _face_box(ep: Episode) -> tuple[int, int, int, int] | None:
    box = (ep.meta or {}).get("face_box")
    return tuple(box) if isinstance(box, list | tuple) else None


def episode_arrays(episodes: Iterable[Episode]) -> list[EpisodeArrays]:
    return [
        EpisodeArrays(
            key=ep.key,
            split=ep.split,
            fps=ep.fps,
            speaker=blobs.load_array(ep.speaker_sha) if ep.speaker_sha else None,
            listener=blobs.load_array(ep.listener_sha),
            audio=blobs.load_array(ep.audio_sha) if ep.audio_sha else None,
            audio_sample_rate=ep.audio_sample_rate,
            transcript=ep.transcript,
            meta=ep.meta,
            pk=ep.pk,
            reference=blobs.load_array(ep.reference_sha) if ep.reference_sha else None,
            video_path=_video_path(ep),
            face_box=_face_box(ep),
        )
        for ep in episodes
    ]


def dataset_split(dataset: Dataset, split: str, limit: int | None = None) -> QuerySet[Episode]:
    qs = dataset.episodes.filter(split=split).order_by("key")
    return qs[:limit] if limit else qs


def policy_version_list() -> QuerySet[PolicyVersion]:
    return (
        PolicyVersion.objects.select_related("dataset")
        .annotate(candidate_count=Count("candidates"))
        .order_by("-created_at")
    )


def candidate_job_episodes(job: CandidateJob) -> QuerySet[Episode]:
    """The episodes a candidate job covers, in key order (ids of episodes deleted since the job
    was made select nothing)."""
    qs = Episode.objects.filter(dataset_id=job.version.dataset_id).order_by("key")
    if not job.split:
        return qs.filter(pk__in=job.episode_ids)
    if job.split != "all":
        qs = qs.filter(split=job.split)
    return qs[: job.limit] if job.limit else qs
