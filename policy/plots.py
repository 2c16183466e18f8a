"""Small server-side SVG plots (no plotting library, no JavaScript)."""

from __future__ import annotations

from html import escape

import numpy as np

_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2")


def line_plot_svg(
    series: dict[str, np.ndarray],
    *,
    fps: float,
    title: str = "",
    spans: list[tuple[float, float, str, str]] | None = None,
    width: int = 720,
    height: int = 180,
    x_end_label: str | None = None,
    y_min: float | None = None,
) -> str:
    """Curves over time in seconds (``len / fps``); ``spans`` shade (start, end, colour, label)
    intervals; ``x_end_label`` replaces the duration printed at the right end of the axis;
    ``y_min`` fixes the bottom of the value axis (0 for counts) instead of the lowest value.
    A series of one value is drawn as a stem and a dot (a polyline of one point draws nothing).
    """
    pad_l, pad_r, pad_t, pad_b = 40, 10, 22, 22
    n = max((len(v) for v in series.values()), default=0)
    duration = max(n / fps, 1e-6)
    values = [v for v in series.values() if len(v)]
    lo = float(min((v.min() for v in values), default=0.0)) if y_min is None else y_min
    hi = float(max((v.max() for v in values), default=1.0))
    if hi - lo < 1e-6:
        hi = lo + 1.0
    pw, ph = width - pad_l - pad_r, height - pad_t - pad_b

    def x(t: float) -> float:
        return pad_l + pw * t / duration

    def y(v: float) -> float:
        return pad_t + ph * (1.0 - (v - lo) / (hi - lo))

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
        f'<rect x="{pad_l}" y="{pad_t}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#ccc"/>',
        f'<text x="{pad_l}" y="14" font-size="12" font-family="sans-serif">{escape(title)}</text>',
    ]
    for start, end, colour, label in spans or []:
        parts.append(
            f'<rect x="{x(start):.1f}" y="{pad_t}" width="{max(x(end) - x(start), 1):.1f}" '
            f'height="{ph}" fill="{colour}" opacity="0.15"><title>{escape(label)}</title></rect>'
        )
    for i, (name, v) in enumerate(series.items()):
        if not len(v):
            continue
        step = max(1, len(v) // pw)  # at most one point per pixel column
        pts = " ".join(f"{x(t / fps):.1f},{y(float(v[t])):.1f}" for t in range(0, len(v), step))
        colour = _PALETTE[i % len(_PALETTE)]
        if len(v) == 1:
            # One value stands for its whole interval: a stem from the axis's bottom and a dot,
            # in the middle of the interval rather than on the frame's left edge.
            cx, cy, base = x(0.5 / fps), y(float(v[0])), y(lo)
            parts.append(
                f'<line x1="{cx:.1f}" y1="{base:.1f}" x2="{cx:.1f}" y2="{cy:.1f}" '
                f'stroke="{colour}" stroke-width="2"/>'
                f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4" fill="{colour}">'
                f'<title>{escape(name)}: {float(v[0]):g}</title></circle>')
        else:
            parts.append(
                f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{pts}"/>')
        parts.append(
            f'<text x="{pad_l + 8 + 110 * i}" y="{height - 6}" font-size="11" fill="{colour}" '
            f'font-family="sans-serif">{escape(name)}</text>'
        )
    parts.append(
        f'<text x="4" y="{pad_t + 10}" font-size="10" font-family="sans-serif">{hi:.2f}</text>'
        f'<text x="4" y="{pad_t + ph}" font-size="10" font-family="sans-serif">{lo:.2f}</text>'
        f'<text x="{width - pad_r - 30}" y="{height - 6}" font-size="10" '
        f'font-family="sans-serif">{escape(x_end_label or f"{duration:.1f} s")}</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


def bar_plot_svg(values: dict[str, float], *, title: str = "", width: int = 560,
                 unit: str = "") -> str:
    """Horizontal bars from a zero line (values may be negative), largest first."""
    rows = sorted(values.items(), key=lambda kv: -kv[1])
    bar_h, pad_t, label_w = 20, 24, 170
    height = pad_t + bar_h * len(rows) + 8
    span = max((abs(v) for _, v in rows), default=1.0) or 1.0
    has_negative = any(v < 0 for _, v in rows)
    plot_w = width - label_w - 60
    zero = label_w + (plot_w / 2 if has_negative else 0)
    scale = (plot_w / 2 if has_negative else plot_w) / span
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
        f'<text x="4" y="14" font-size="12" font-family="sans-serif">{escape(title)}</text>',
        f'<line x1="{zero:.1f}" y1="{pad_t - 2}" x2="{zero:.1f}" y2="{height - 6}" '
        'stroke="#888"/>',
    ]
    for i, (name, v) in enumerate(rows):
        y = pad_t + i * bar_h
        x0 = zero if v >= 0 else zero + v * scale
        colour = _PALETTE[i % len(_PALETTE)]
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 14}" font-size="11" text-anchor="end" '
            f'font-family="sans-serif">{escape(name)}</text>'
            f'<rect x="{x0:.1f}" y="{y + 3}" width="{max(abs(v) * scale, 1):.1f}" '
            f'height="{bar_h - 6}" fill="{colour}"/>'
            f'<text x="{zero + max(v, 0) * scale + 4:.1f}" y="{y + 14}" font-size="10" '
            f'font-family="sans-serif">{v:+.2f}{escape(unit)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
