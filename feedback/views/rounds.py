"""Admins' round pages: the rounds with a form to start one, one round (steps with their
percentage, curves, the critic against human agreement, the evaluation and its gates, the log,
and the buttons), a lineage's versions with promote / roll back, and two versions compared."""

from __future__ import annotations

import numpy as np
from django import forms
from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseForbidden
from django.shortcuts import redirect, render
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from annotation.models import Campaign
from annotation.roles import is_admin
from feedback.models import ROUND_STEPS, Promotion, Round, RoundStatus
from feedback.services.rounds import (
    DEFAULTS,
    METHODS,
    ROUND_ACTIONS,
    RoundError,
    round_start,
    version_promote,
    version_rollback,
)
from policy.models import PolicyVersion
from policy.plots import line_plot_svg

ACTIONS = ROUND_ACTIONS


def _admin(request: HttpRequest) -> HttpResponse | None:
    if not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    if not is_admin(request.user):
        return HttpResponseForbidden("admins only")
    return None


class RoundForm(forms.Form):
    campaigns = forms.MultipleChoiceField(widget=forms.CheckboxSelectMultiple)
    method = forms.ChoiceField(choices=[(m, m) for m in METHODS], initial=DEFAULTS["method"])
    min_pairs = forms.IntegerField(min_value=1, initial=DEFAULTS["min_pairs"])
    auto_promote = forms.BooleanField(required=False,
                                      help_text="promote without a click when the gates pass")

    def __init__(self, *args, campaigns: list[Campaign], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["campaigns"].choices = [(c.slug, f"{c.name} ({c.slug})") for c in campaigns]


def curve_svg(points: list, title: str) -> str:
    pts = [p for p in points or [] if p and p[1] is not None]
    if not pts:
        return ""
    values = np.array([p[1] for p in pts], dtype=float)
    return line_plot_svg({title: values}, fps=1.0, width=560, height=180,
                         title=f"{title}, steps {int(pts[0][0])}–{int(pts[-1][0])}",
                         x_end_label=f"step {int(pts[-1][0])}")


@require_http_methods(["GET", "POST"])
def round_list(request: HttpRequest) -> HttpResponse:
    if (denied := _admin(request)) is not None:
        return denied
    campaigns = list(Campaign.objects.order_by("-pk")[:200])
    form = RoundForm(request.POST or None, campaigns=campaigns)
    if request.method == "POST" and form.is_valid():
        chosen = [c for c in campaigns if c.slug in form.cleaned_data["campaigns"]]
        try:
            r = round_start(campaigns=chosen, user=request.user, trigger="admin", config={
                "method": form.cleaned_data["method"],
                "min_pairs": form.cleaned_data["min_pairs"],
                "auto_promote": form.cleaned_data["auto_promote"]})
        except RoundError as exc:
            form.add_error(None, str(exc))
        else:
            return redirect("feedback:round", round_id=r.pk)
    rounds = (Round.objects.select_related("parent", "output_version")
              .prefetch_related("campaigns").order_by("-pk")[:100])
    return render(request, "feedback/round_list.html", {"rounds": rounds, "form": form})


def _step_rows(r: Round) -> list[dict]:
    here = ROUND_STEPS.index(r.step)
    rows = []
    for i, step in enumerate(ROUND_STEPS):
        rec = r.steps.get(step, {})
        if i < here or (i == here and r.status == RoundStatus.SUCCEEDED):
            state = "done"
        elif i == here:
            state = {"running": "running", "queued": "queued"}.get(r.step_state, r.status)
            if r.status in (RoundStatus.FAILED, RoundStatus.CANCELLED, RoundStatus.WAITING):
                state = r.status
        else:
            state = ""
        rows.append({"name": step, "state": state, "progress": rec.get("progress", 0.0),
                     "seconds": rec.get("seconds"), "attempts": rec.get("attempts", 0)})
    return rows


def critic_rows(report: dict, head: str = "overall") -> list[dict]:
    """Held-out accuracy of the critic next to the people's agreement on the same judgments,
    overall and by judged strength."""
    if not report:
        return []
    parts = {k: report.get(k, {}).get(head, {}) for k in ("heldout", "heldout_on_human_set",
                                                            "human")}
    rows = []
    for stratum in ("all", "1", "2", "3"):
        cells = {k: (v if stratum == "all" else v.get("by_strength", {}).get(stratum, {}))
                 for k, v in parts.items()}
        rows.append({"stratum": "every strength" if stratum == "all" else stratum,
                     "critic": cells["heldout"].get("accuracy"),
                     "n": cells["heldout"].get("n", 0),
                     "critic_same": cells["heldout_on_human_set"].get("accuracy"),
                     "human": cells["human"].get("accuracy"),
                     "human_n": cells["human"].get("n", 0)})
    return rows


@require_GET
def round_detail(request: HttpRequest, round_id: int) -> HttpResponse:
    if (denied := _admin(request)) is not None:
        return denied
    r = (Round.objects.select_related("parent", "output_version", "next_campaign", "snapshot")
         .prefetch_related("campaigns").filter(pk=round_id).first())
    if r is None:
        raise Http404("no such round")
    plots = [curve_svg(r.curves.get(name), label) for name, label in (
        ("critic_loss", "critic loss"), ("optimise_loss", "optimisation loss"),
        ("val_l2_ratio", "validation L2 / parent's"), ("val_fd_ratio", "validation FD / parent's"))]
    critic = r.report.get("critic", {})
    return render(request, "feedback/round_detail.html", {
        "r": r, "steps": _step_rows(r), "plots": [mark_safe(p) for p in plots if p],  # noqa: S308
        "running": r.status in (RoundStatus.QUEUED, RoundStatus.RUNNING),
        "critic": critic, "critic_rows": critic_rows(critic),
        "evaluation": r.report.get("evaluation", {}),
        "snapshot": r.report.get("snapshot", {}),
        "can": {"cancel": r.status not in (RoundStatus.SUCCEEDED, RoundStatus.CANCELLED),
                "resume": r.status == RoundStatus.FAILED,
                "promote": r.status == RoundStatus.WAITING,
                "keep_parent": r.status == RoundStatus.WAITING},
    })


@require_POST
def round_action(request: HttpRequest, round_id: int) -> HttpResponse:
    if (denied := _admin(request)) is not None:
        return denied
    r = Round.objects.filter(pk=round_id).first()
    action = ACTIONS.get(request.POST.get("action", ""))
    if r is None or action is None:
        raise Http404("no such round or action")
    try:
        action(rnd=r, user=request.user)
    except RoundError as exc:
        messages.error(request, str(exc))
    return redirect("feedback:round", round_id=round_id)


@require_http_methods(["GET", "POST"])
def lineage(request: HttpRequest, lineage: str) -> HttpResponse:
    if (denied := _admin(request)) is not None:
        return denied
    versions = list(PolicyVersion.objects.filter(lineage=lineage).select_related("parent")
                    .order_by("-created_at"))
    if not versions:
        raise Http404("no such lineage")
    if request.method == "POST":
        try:
            if request.POST.get("action") == "rollback":
                p = version_rollback(lineage=lineage, user=request.user)
            else:
                v = next((v for v in versions if str(v.pk) == request.POST.get("version")), None)
                if v is None:
                    raise RoundError("no such version in this lineage")
                p = version_promote(version=v, user=request.user)
            messages.success(request, f"{p.version.name} is promoted")
        except RoundError as exc:
            messages.error(request, str(exc))
        return redirect("feedback:lineage", lineage=lineage)
    history = Promotion.objects.filter(lineage=lineage).select_related(
        "version", "previous", "by", "round").order_by("-at", "-pk")[:50]
    return render(request, "feedback/lineage.html", {
        "lineage": lineage, "versions": versions, "history": history})


CLIP_EPISODES = 3  # speaker clips shown on the comparison page
COMPARE_METRICS = ("oracle", "l2", "fd", "pfd", "variance", "frdiv", "si_div_expression")


def _clips(a: PolicyVersion, b: PolicyVersion) -> list[dict]:
    """A few episodes where both versions have a rendered clip: the speaker and one of each."""
    from annotation.models import Item, ItemMember
    from rendering.models import ClipStatus
    from rendering.signing import clip_url

    members = (ItemMember.objects.filter(candidate__policy_version__in=[a, b],
                                         clip__status=ClipStatus.SUCCEEDED)
               .select_related("clip", "candidate", "item").order_by("item__episode_id", "pk"))
    by_episode: dict[int, dict] = {}
    for m in members[:2000]:
        side = "a" if m.candidate.policy_version_id == a.pk else "b"
        row = by_episode.setdefault(m.item.episode_id, {"item": m.item})
        row.setdefault(side, clip_url(m.clip))
    rows = []
    for row in by_episode.values():
        if "a" in row and "b" in row:
            item = Item.objects.select_related("speaker_clip", "episode").get(pk=row["item"].pk)
            speaker = item.speaker_clip
            rows.append({"episode": item.episode.key, "a": row["a"], "b": row["b"],
                         "speaker": clip_url(speaker) if speaker and speaker.status
                         == ClipStatus.SUCCEEDED else None})
        if len(rows) >= CLIP_EPISODES:
            break
    return rows


def _ratings(a: PolicyVersion, b: PolicyVersion) -> tuple[list[dict], list[str]]:
    """Source ratings with intervals from the campaigns that rated both versions."""
    from feedback.services.ratings import campaign_ratings

    labels = {f"policy:{a.name}", f"policy:{b.name}"}
    campaigns = [c for c in Campaign.objects.all()
                 if labels <= {f"policy:{s.get('version')}" for s in c.sources
                               if s.get("kind") == "policy"}]
    if not campaigns:
        return [], []
    try:
        result = campaign_ratings(campaigns=campaigns)
    except ValueError:
        return [], [c.slug for c in campaigns]
    return result.sources, [c.slug for c in campaigns]


@require_GET
def version_compare(request: HttpRequest) -> HttpResponse:
    if (denied := _admin(request)) is not None:
        return denied
    versions = {v.name: v for v in PolicyVersion.objects.filter(
        name__in=[request.GET.get("a", ""), request.GET.get("b", "")])}
    a, b = versions.get(request.GET.get("a", "")), versions.get(request.GET.get("b", ""))
    choices = list(PolicyVersion.objects.order_by("-created_at").values_list("name", flat=True))
    context: dict = {"choices": choices, "a": a, "b": b}
    if a is not None and b is not None:
        pa = (a.metrics or {}).get("sources", {}).get("policy", a.metrics or {})
        pb = (b.metrics or {}).get("sources", {}).get("policy", b.metrics or {})
        context["metrics"] = [(m, pa.get(m), pb.get(m)) for m in COMPARE_METRICS
                              if pa.get(m) is not None or pb.get(m) is not None]
        rnd = (Round.objects.filter(parent__in=[a, b], output_version__in=[a, b])
               .order_by("-pk").first())
        context["round"] = rnd
        if rnd is not None:
            ev = rnd.report.get("evaluation", {})
            flip = rnd.output_version_id == a.pk  # the round measured output over parent
            context["win_rates"] = [
                (label, (1 - ev[key]) if flip else ev[key])
                for label, key in (("critic", "critic_win_rate"), ("oracle", "oracle_win_rate"))
                if ev.get(key) is not None]
        rows, slugs = _ratings(a, b)
        keep = {f"policy:{a.name}", f"policy:{b.name}"}
        context["ratings"] = [r for r in rows if r.get("label") in keep]
        context["all_ratings"] = rows
        context["rating_campaigns"] = slugs
        context["clips"] = _clips(a, b)
    return render(request, "feedback/version_compare.html", context)
