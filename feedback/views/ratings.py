"""The ratings page of a campaign: sources with intervals, the win-rate matrix, candidates.

Plots are drawn on the server as inline SVG, as the campaign page draws its own
(``policy.plots``): no plotting library, no JavaScript.
"""

from __future__ import annotations

import math
from html import escape

from django.contrib.auth.views import redirect_to_login
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from annotation.selectors import campaign_get_for
from feedback.services.ratings import RatingsResult, campaign_ratings

BOOTSTRAP_ROUNDS = 100  # when the page is asked for bootstrap intervals
CANDIDATE_ROWS = 500  # candidates listed at most (strongest and weakest halves)
_FONT = 'font-family="sans-serif"'


def _x_scale(rows: list[dict], left: float, width: float):
    values = [v for r in rows for v in (r["strength"], r["lo"], r["hi"]) if v is not None]
    lo, hi = min(values + [0.0]), max(values + [0.0])
    if hi - lo < 1e-9:
        lo, hi = lo - 1.0, hi + 1.0
    pad = 0.05 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    return lo, hi, (lambda v: left + width * (v - lo) / (hi - lo))


def interval_plot_svg(rows: list[dict], *, title: str, width: int = 720) -> str:
    """One row per player: a dot at its strength and a whisker over its interval, on a shared
    axis with a line at 0 (the average)."""
    row_h, pad_t, pad_b, label_w, value_w = 24, 26, 26, 190, 130
    height = pad_t + row_h * len(rows) + pad_b
    plot_w = width - label_w - value_w
    lo, hi, x = _x_scale(rows, label_w, plot_w)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" '
        'class="interval-plot">',
        f'<text x="4" y="16" font-size="12" {_FONT}>{escape(title)}</text>',
        f'<line x1="{x(0):.1f}" y1="{pad_t - 4}" x2="{x(0):.1f}" y2="{height - pad_b + 4}" '
        'stroke="#999" stroke-dasharray="3 3"/>',
    ]
    for k, r in enumerate(rows):
        cy = pad_t + k * row_h + row_h / 2
        name = r.get("label", r.get("id"))
        parts.append(f'<text x="{label_w - 8}" y="{cy + 4:.1f}" font-size="11" '
                     f'text-anchor="end" {_FONT}>{escape(str(name))}</text>')
        tip = f"{name}: {r['strength']:+.2f}"
        if r["lo"] is not None:
            tip += f" [{r['lo']:+.2f}, {r['hi']:+.2f}]"
            parts.append(f'<line x1="{x(r["lo"]):.1f}" y1="{cy:.1f}" x2="{x(r["hi"]):.1f}" '
                         f'y2="{cy:.1f}" stroke="#1f5fa8" stroke-width="2"/>')
            for end in (r["lo"], r["hi"]):
                parts.append(f'<line x1="{x(end):.1f}" y1="{cy - 5:.1f}" x2="{x(end):.1f}" '
                             f'y2="{cy + 5:.1f}" stroke="#1f5fa8" stroke-width="2"/>')
        tip += f", n = {r['n']}"
        parts.append(f'<circle cx="{x(r["strength"]):.1f}" cy="{cy:.1f}" r="5" '
                     f'fill="#1f5fa8"><title>{escape(tip)}</title></circle>')
        parts.append(f'<text x="{label_w + plot_w + 8}" y="{cy + 4:.1f}" font-size="10" '
                     f'{_FONT}>{r["strength"]:+.2f} (n = {r["n"]})</text>')
    axis_y = height - pad_b + 16
    parts.append(
        f'<text x="{label_w}" y="{axis_y}" font-size="10" {_FONT}>{lo:+.2f}</text>'
        f'<text x="{x(0):.1f}" y="{axis_y}" font-size="10" text-anchor="middle" {_FONT}>0</text>'
        f'<text x="{label_w + plot_w}" y="{axis_y}" font-size="10" text-anchor="end" {_FONT}>'
        f'{hi:+.2f}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _colour(rate: float | None) -> str:
    """Blue for a row that wins, red for one that loses, white at one half."""
    if rate is None:
        return "#eeeeee"
    t = max(-1.0, min(1.0, 2 * rate - 1))
    strong, weak = (31, 95, 168), (200, 40, 40)
    target = strong if t > 0 else weak
    mix = [round(255 + (c - 255) * abs(t)) for c in target]
    return "#{:02x}{:02x}{:02x}".format(*mix)


def heat_map_svg(labels: list[str], matrix: list[list[float | None]],
                 counts: list[list[int]], *, title: str, cell: int = 56) -> str:
    """Row beats column in this share of their decisive judgments."""
    n = len(labels)
    longest = max((len(s) for s in labels), default=0)
    # column labels are turned 40°: about 4 px up and 5 px right per character at 10 px
    label_w, pad_t = 190, 30 + 4 * longest
    width, height = label_w + cell * n + 5 * longest, pad_t + cell * n + 10
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" '
        'class="heat-map">',
        f'<text x="4" y="16" font-size="12" {_FONT}>{escape(title)}</text>',
    ]
    for b, name in enumerate(labels):
        cx = label_w + b * cell + cell / 2
        parts.append(f'<text x="{cx:.1f}" y="{pad_t - 6}" font-size="10" text-anchor="start" '
                     f'transform="rotate(-40 {cx:.1f} {pad_t - 6})" {_FONT}>'
                     f'{escape(name)}</text>')
    for a, name in enumerate(labels):
        y = pad_t + a * cell
        parts.append(f'<text x="{label_w - 8}" y="{y + cell / 2 + 4:.1f}" font-size="11" '
                     f'text-anchor="end" {_FONT}>{escape(name)}</text>')
        for b in range(n):
            rate = matrix[a][b]
            x = label_w + b * cell
            tip = (f"{name} vs {labels[b]}: " + ("no decisive judgments" if rate is None else
                   f"wins {100 * rate:.0f} % of decisive") + f" ({counts[a][b]} compared)")
            parts.append(f'<rect x="{x}" y="{y}" width="{cell - 2}" height="{cell - 2}" '
                         f'fill="{_colour(rate)}"><title>{escape(tip)}</title></rect>')
            if rate is not None:
                ink = "#fff" if abs(2 * rate - 1) > 0.6 else "#1d2430"
                parts.append(f'<text x="{x + cell / 2 - 1:.1f}" y="{y + cell / 2 + 4:.1f}" '
                             f'font-size="12" text-anchor="middle" fill="{ink}" {_FONT}>'
                             f'{100 * rate:.0f}%</text>')
    parts.append("</svg>")
    return "".join(parts)


def _candidate_rows(result: RatingsResult) -> tuple[list[dict], int]:
    rows = result.candidates
    if len(rows) <= CANDIDATE_ROWS:
        return rows, 0
    half = CANDIDATE_ROWS // 2
    return rows[:half] + rows[-half:], len(rows) - 2 * half


@require_GET
def campaign_ratings_page(request: HttpRequest, slug: str) -> HttpResponse:
    """Researchers who may see the campaign (its creator, those it is shared with, admins);
    anyone else gets a 404, as if it did not exist. ``?all=1`` keeps the answers of raters
    quality control excluded; ``?bootstrap=1`` draws bootstrap intervals instead of sandwich
    ones."""
    if not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    campaign = campaign_get_for(request.user, slug)
    if campaign is None:
        raise Http404("no such campaign")
    keep_all = request.GET.get("all") == "1"
    boot = request.GET.get("bootstrap") == "1"
    result = campaign_ratings(campaigns=[campaign], exclude_excluded=not keep_all,
                              rounds=BOOTSTRAP_ROUNDS if boot else 0)
    level = f"{100 * result.level:.0f} %"
    what = (f"bootstrap {level} intervals, {result.rounds} rounds" if boot
            else f"sandwich {level} intervals")
    rows, hidden = _candidate_rows(result)
    return render(request, "feedback/ratings.html", {
        "campaign": campaign, "result": result, "keep_all": keep_all, "bootstrap": boot,
        "sources_plot": interval_plot_svg(
            result.sources, title=f"Source log-strength (0 = average; {what})")
        if result.sources else "",
        "win_rate_plot": heat_map_svg(
            result.win_rate.labels, result.win_rate.matrix, result.pair_counts,
            title="Row beats column: share of their decisive judgments")
        if len(result.win_rate.labels) > 1 else "",
        "candidates": rows, "candidates_hidden": hidden,
        "nu_text": _nu_text(result),
    })


def _nu_text(result: RatingsResult) -> str:
    if result.nu <= 0:
        return "no ties"
    lo, hi = result.nu_interval
    # At equal strengths P(tie) = ν / (2 + ν).
    share = result.nu / (2 + result.nu)
    text = f"ν = {result.nu:.2f}"
    if math.isfinite(lo) and math.isfinite(hi):
        text += f" [{lo:.2f}, {hi:.2f}]"
    return text + f": between equals, {100 * share:.0f} % of judgments are ties"
