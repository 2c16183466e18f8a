from __future__ import annotations

import numpy as np
from django.db.models import Count, QuerySet

from policy.models import Dataset, Episode
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
    streams = [("listener", episode.listener_sha), ("speaker", episode.speaker_sha)]
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
