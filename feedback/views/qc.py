"""The quality page of a campaign: agreement against the human ceiling, alpha, cycles, the
rater table with overrides, and plots of side bias and decision time (inline SVG, no script)."""

from __future__ import annotations

import uuid
from html import escape

import numpy as np
from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseForbidden
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from annotation.models import Enrollment
from annotation.roles import is_researcher
from annotation.selectors import campaign_get_for
from feedback import qc
from feedback.services.qc import (
    OVERRIDE_STATUSES,
    QcError,
    qc_override,
    qc_run_create,
    quality_page,
    run_summary,
)
from policy.models import JobStatus

STATUS_COLOURS = {"trusted": "#2ca02c", "flagged": "#ff7f0e", "excluded": "#d62728"}
_FONT = 'font-family="sans-serif"'


@require_http_methods(["GET", "POST"])
def quality(request: HttpRequest, slug: str) -> HttpResponse:
    if not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    if not is_researcher(request.user):
        return HttpResponseForbidden("researchers only")
    campaign = campaign_get_for(request.user, slug)
    if campaign is None:
        raise Http404("no such campaign")
    if request.method == "POST":
        _act(request, campaign)
        return redirect("feedback:quality", slug=slug)
    page = quality_page(campaign=campaign)
    run = page["run"]
    th: qc.Thresholds = page["thresholds"]
    figures = page["figures"]
    rows = page["raters"]
    running = run is not None and run.status in (JobStatus.QUEUED, JobStatus.RUNNING)
    c = figures.campaign or {}
    return render(request, "feedback/qc.html", {
        "campaign": campaign, "run": run_summary(run), "running": running,
        "figures": c, "kept": figures.campaign_kept or {},
        "judgments_seen": figures.judgments_seen, "rows": [_display(r) for r in rows],
        "statuses": [(s, sum(1 for r in rows if r["status"] == s), STATUS_COLOURS[s])
                     for s in STATUS_COLOURS],
        "override_statuses": OVERRIDE_STATUSES, "thresholds": th.as_dict(),
        "agreement_svg": agreement_svg(c, figures.campaign_kept or {}),
        "side_svg": side_bias_svg(rows, th), "speed_svg": speed_svg(rows, th),
    })


def _act(request: HttpRequest, campaign) -> None:
    action = request.POST.get("action", "")
    if action == "run":
        run = qc_run_create(campaign=campaign, user=request.user)
        messages.success(request, f"Quality control run #{run.pk} {run.status}.")
        return
    if action != "override":
        messages.error(request, f"unknown action {action!r}")
        return
    try:
        pseudonym = uuid.UUID(request.POST.get("pseudonym", ""))
    except ValueError:
        messages.error(request, "pseudonym: not a rater of this campaign")
        return
    enrollment = Enrollment.objects.filter(campaign=campaign, pseudonym=pseudonym).first()
    if enrollment is None:
        messages.error(request, "pseudonym: not a rater of this campaign")
        return
    try:
        d = qc_override(enrollment=enrollment, status=request.POST.get("status", ""),
                        reason=request.POST.get("reason", ""), user=request.user)
    except QcError as exc:
        messages.error(request, str(exc))
        return
    messages.success(request, f"{str(pseudonym)[:8]}: {d.status} ({d.source}).")


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.0f} %"


def _num(x, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _display(r: dict) -> dict:
    """A table row's cells as text (the raw figures stay in the API)."""
    return {
        **r, "short": r["pseudonym"][:8], "colour": STATUS_COLOURS.get(r["status"], "#777"),
        "gold": f"{_pct(r['gold_accuracy'])} of {r['gold_n']}" if r["gold_n"] else "–",
        "catch": f"{_pct(r['catch_accuracy'])} of {r['catch_n']}" if r["catch_n"] else "–",
        "repeat": f"{_pct(r['repeat_consistency'])} of {r['repeat_n']}" if r["repeat_n"]
        else "–",
        "side": (f"{_pct(r['left_share'])} left, p={r['side_p']:.2g}"
                 if r["decisive_n"] and r["side_p"] is not None else "–"),
        "fast": _pct(r["fast_share"]), "loo": _num(r["loo_agreement"]),
        "reliability": _num(r["reliability"]),
    }


# --- plots -----------------------------------------------------------------------------------

def _svg(width: int, height: int, title: str, body: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">'
            f'<text x="4" y="14" font-size="12" {_FONT}>{escape(title)}</text>'
            + "".join(body) + "</svg>")


def agreement_svg(figures: dict, kept: dict, width: int = 640) -> str:
    """Raw pairwise agreement as bars on 0-100 %, with the human ceiling (70-80 %) drawn as a
    band: the share of two answers to the same pair that agree."""
    bars = [("decisive answers", figures.get("agreement_decisive")),
            ("all answers (no preference as a label)", figures.get("agreement")),
            ("decisive, excluded raters left out", kept.get("agreement_decisive"))]
    bars = [(label, v) for label, v in bars if v is not None]
    if not bars:
        return ""
    left, right, top, row = 250, 20, 24, 22
    height = top + row * len(bars) + 26
    pw = width - left - right

    def x(v: float) -> float:
        return left + pw * v

    lo, hi = qc.HUMAN_CEILING
    body = []
    for i, (label, v) in enumerate(bars):
        y = top + i * row
        body.append(f'<text x="{left - 6}" y="{y + 13}" font-size="11" {_FONT} '
                    f'text-anchor="end">{escape(label)}</text>'
                    f'<rect x="{left}" y="{y + 2}" width="{pw}" height="14" fill="#f2f2f2"/>'
                    f'<rect x="{left}" y="{y + 2}" width="{pw * v:.1f}" height="14" '
                    f'fill="#1f77b4"/><text x="{x(v) + 4 if v < 0.9 else x(v) - 34:.1f}" '
                    f'y="{y + 13}" font-size="11" {_FONT}>{v:.0%}</text>')
    # the ceiling over the bars: a band a bar reaches into, edged by its two limits
    band_h = row * len(bars) + 4
    body.append(f'<rect x="{x(lo):.1f}" y="{top - 2}" width="{x(hi) - x(lo):.1f}" '
                f'height="{band_h}" fill="#2ca02c" opacity="0.25"><title>human ceiling '
                f'{lo:.0%}–{hi:.0%}</title></rect>')
    for edge in (lo, hi):
        body.append(f'<line x1="{x(edge):.1f}" x2="{x(edge):.1f}" y1="{top - 2}" '
                    f'y2="{top - 2 + band_h}" stroke="#2ca02c" stroke-width="1.5"/>')
    body.append(f'<text x="{x(lo):.1f}" y="{height - 4}" font-size="10" {_FONT} '
                f'fill="#2ca02c">human ceiling {lo:.0%}–{hi:.0%}</text>')
    for t in (0.0, 0.5, 1.0):
        body.append(f'<text x="{x(t) - 8:.1f}" y="{height - 14}" font-size="9" {_FONT} '
                    f'fill="#666">{t:.0%}</text>')
    return _svg(width, height, "Raw pairwise agreement", body)


def side_bias_svg(rows: list[dict], th: qc.Thresholds, width: int = 640,
                  height: int = 260) -> str:
    """Share of left presses per rater against their number of decisive presses, inside the band
    an unbiased rater stays in (two-sided binomial test at ``side_bias_p``): a dot outside the
    band and beyond the dashed share lines is flagged."""
    pts = [(r["decisive_n"], r["left_share"], r) for r in rows
           if r["decisive_n"] and r["left_share"] is not None]
    if not pts:
        return ""
    left, right, top, bottom = 40, 14, 24, 28
    pw, ph = width - left - right, height - top - bottom
    n_max = max(max(n for n, _, _ in pts), th.min_decisive, 10)

    def x(n: float) -> float:
        return left + pw * n / n_max

    def y(s: float) -> float:
        return top + ph * (1.0 - s)

    grid = np.unique(np.linspace(1, n_max, min(n_max, 200)).round())
    lo, hi = qc.binomial_band(grid, th.side_bias_p)
    band = " ".join(f"{x(n):.1f},{y(h):.1f}" for n, h in zip(grid, hi)) + " " + " ".join(
        f"{x(n):.1f},{y(v):.1f}" for n, v in zip(grid[::-1], lo[::-1]))
    s = th.side_bias_share
    body = [f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fafafa" '
            f'stroke="#ccc"/>',
            f'<polygon points="{band}" fill="#1f77b4" opacity="0.15"><title>no side bias at '
            f'p ≥ {th.side_bias_p:g}</title></polygon>',
            f'<line x1="{left}" x2="{left + pw}" y1="{y(0.5):.1f}" y2="{y(0.5):.1f}" '
            f'stroke="#999"/>']
    for share in (s, 1 - s):
        body.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(share):.1f}" '
                    f'y2="{y(share):.1f}" stroke="#d62728" stroke-dasharray="4 3"/>')
    for n, share, r in pts:
        body.append(f'<circle cx="{x(n):.1f}" cy="{y(share):.1f}" r="4" '
                    f'fill="{STATUS_COLOURS.get(r["status"], "#777")}" opacity="0.85">'
                    f'<title>{escape(r["pseudonym"][:8])}: {share:.0%} left of {n} '
                    f'(p={r["side_p"]:.2g}), {r["status"]}</title></circle>')
    body.append(f'<text x="4" y="{y(1) + 4:.1f}" font-size="10" {_FONT}>100 %</text>'
                f'<text x="4" y="{y(0.5) + 4:.1f}" font-size="10" {_FONT}>50 %</text>'
                f'<text x="4" y="{y(0) + 4:.1f}" font-size="10" {_FONT}>0 %</text>'
                f'<text x="{left}" y="{height - 8}" font-size="10" {_FONT}>decisive answers '
                f'(left or right) → {n_max}</text>')
    return _svg(width, height, "Share of left per rater (band: unbiased at "
                f"p ≥ {th.side_bias_p:g})", body)


def speed_svg(rows: list[dict], th: qc.Thresholds, width: int = 640, limit: int = 40) -> str:
    """Per rater, decision time over clip length: 10th to 90th percentile as a line, the median
    as a dot, the too-fast line at ``fast_fraction``; the share too fast at the right. The
    raters with the largest share too fast first."""
    timed = [r for r in rows if r["timed_n"] and r["time_ratio_p50"] is not None]
    if not timed:
        return ""
    timed.sort(key=lambda r: -(r["fast_share"] or 0.0))
    timed = timed[:limit]
    left, right, top, row = 70, 90, 26, 16
    height = top + row * len(timed) + 24
    pw = width - left - right
    x_max = max(2.0, min(10.0, max(r["time_ratio_p90"] or 0 for r in timed)))

    def x(v: float) -> float:
        return left + pw * min(v, x_max) / x_max

    body = [f'<rect x="{x(0):.1f}" y="{top - 4}" width="{x(th.fast_fraction) - x(0):.1f}" '
            f'height="{row * len(timed) + 4}" fill="#d62728" opacity="0.12"><title>too fast: '
            f'under {th.fast_fraction:.0%} of the clip</title></rect>']
    for i, r in enumerate(timed):
        y = top + i * row + row / 2
        colour = STATUS_COLOURS.get(r["status"], "#777")
        body.append(f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="10" {_FONT} '
                    f'text-anchor="end">{escape(r["pseudonym"][:8])}</text>'
                    f'<line x1="{x(r["time_ratio_p10"]):.1f}" x2="{x(r["time_ratio_p90"]):.1f}" '
                    f'y1="{y:.1f}" y2="{y:.1f}" stroke="{colour}" stroke-width="2"/>'
                    f'<circle cx="{x(r["time_ratio_p50"]):.1f}" cy="{y:.1f}" r="3.5" '
                    f'fill="{colour}"><title>median {r["time_ratio_p50"]:.2f} of the clip, '
                    f'{r["timed_n"]} answers</title></circle>'
                    f'<text x="{left + pw + 6}" y="{y + 4:.1f}" font-size="10" {_FONT}>'
                    f'{_pct(r["fast_share"])} too fast</text>')
    for t in (0.0, th.fast_fraction, 1.0, x_max):
        body.append(f'<text x="{x(t) - 6:.1f}" y="{height - 6}" font-size="9" {_FONT} '
                    f'fill="#666">{t:g}</text>')
    return _svg(width, height, "Decision time / clip length (10th–90th percentile, median)",
                body)
