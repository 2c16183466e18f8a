"""Pages: sign-in, the invite landing page, the rater page, exposure media, researchers' campaign
pages."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from functools import wraps

import numpy as np
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import LoginView, redirect_to_login
from django.core import signing
from django.db.models import Count
from django.db.models.functions import TruncMinute
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseForbidden
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods

from annotation.forms import CampaignForm, CampaignSettingsForm
from annotation.models import CRITERIA, CampaignStatus, Invite, Judgment, Protocol, SamplingStatus
from annotation.pages import campaign_links
from annotation.roles import is_researcher
from annotation.selectors import (
    campaign_get_for,
    campaign_list_for,
    campaign_progress,
    campaign_summary,
    campaigns_with_counts,
    exposure_clips,
    media_file_read,
    media_token_read,
    rater_rows,
)
from annotation.services.campaigns import (
    CampaignError,
    campaign_create,
    campaign_delete,
    campaign_sampling_progress,
    campaign_sampling_retry,
    campaign_set_status,
    campaign_start_refusal,
    campaign_update,
    invite_create,
)
from annotation.services.enrollment import (
    InviteError,
    InviteThrottled,
    consent_give,
    invite_accept,
    rater_token_make,
)
from annotation.services.scheduling import LeaseError, enrollment_for
from annotation.services.sign_in import client_address, sign_in_wait
from annotation.services.throttle import wait_words
from policy.plots import bar_plot_svg, line_plot_svg
from rendering.blinding import Padding, exposure_key, shared_size, video_padding
from rendering.models import ClipStatus
from rendering.selectors import clip_stored_size, clip_video_plan
from rendering.views import clip_file_response

CROWD_EXTRA = ("STUDY_ID", "SESSION_ID")
_ZERO = uuid.UUID(int=0)  # placeholder in URL templates the page fills in


# -- sign-in ----------------------------------------------------------------------------------

def sign_in_throttled(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """A sign-in form's view, refusing attempts (429) while ``sign_in_wait`` says to wait,
    before any password is checked. Failures are counted where a password check fails
    (``receivers.on_sign_in_failed``), whichever form it came from."""

    @wraps(view)
    @never_cache
    def throttled(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if request.method == "POST":
            wait = sign_in_wait(username=request.POST.get("username", ""),
                                address=client_address(request))
            if wait:
                reply = render(request, "annotation/sign_in.html", {
                    "refused": "Too many failed sign-ins for this account or from this "
                               f"address. Try again in {wait_words(wait)}."}, status=429)
                reply["Retry-After"] = str(wait)
                return reply
        return view(request, *args, **kwargs)

    return throttled


class SignInView(LoginView):
    """Sign-in for researchers and raters (the admin's form takes staff accounts only)."""

    template_name = "annotation/sign_in.html"


sign_in = sign_in_throttled(SignInView.as_view())


def admin_sign_in(request: HttpRequest, **kwargs) -> HttpResponse:
    """The admin's sign-in form, throttled as the site's. A page outside the admin that sends
    someone signed out here goes to the site's form instead, which takes accounts that are not
    staff."""
    target = request.GET.get("next", "")
    if (request.method == "GET" and target and not request.user.is_authenticated
            and not target.startswith(reverse("admin:index"))):
        return redirect_to_login(target)
    return _admin_sign_in(request, **kwargs)


@sign_in_throttled
def _admin_sign_in(request: HttpRequest, **kwargs) -> HttpResponse:
    return admin.site.login(request, **kwargs)


@require_http_methods(["GET", "POST"])
def invite(request: HttpRequest, token: str) -> HttpResponse:
    """GET shows the study, its instructions and consent; POST (the Start button) enrols."""
    inv = Invite.objects.select_related("campaign").filter(token=token, active=True).first()
    if inv is None:
        return render(request, "annotation/message.html",
                      {"title": "Invite not valid", "text": "This invite link is not valid."},
                      status=404)
    campaign = inv.campaign
    source = request.POST if request.method == "POST" else request.GET
    participant = source.get(campaign.crowd_param, "") if campaign.crowd_param else ""
    if request.method == "GET":
        return render(request, "annotation/invite.html", {
            "campaign": campaign, "participant": participant,
            "crowd": {k: request.GET.get(k, "") for k in CROWD_EXTRA},
        })
    if campaign.consent_text and not source.get("consent"):
        return render(request, "annotation/invite.html", {
            "campaign": campaign, "participant": participant,
            "crowd": {k: source.get(k, "") for k in CROWD_EXTRA},
            "error": "Please tick the box to agree before starting.",
        }, status=400)
    try:
        enrollment = invite_accept(
            token=token, user=request.user, participant=participant,
            study=source.get("STUDY_ID", ""), session=source.get("SESSION_ID", ""),
            address=client_address(request))
    except InviteThrottled as exc:
        reply = render(request, "annotation/message.html",
                       {"title": "Please try again later", "text": str(exc)}, status=429)
        reply["Retry-After"] = str(exc.wait)
        return reply
    except InviteError as exc:
        return render(request, "annotation/message.html",
                      {"title": "Cannot start", "text": str(exc)}, status=400)
    if not request.user.is_authenticated or request.user.pk != enrollment.rater_id:
        login(request, enrollment.rater, backend="django.contrib.auth.backends.ModelBackend")
    if campaign.consent_text:
        consent_give(enrollment=enrollment)
    return redirect("annotation:rate", slug=campaign.slug)


@never_cache  # the page embeds the rater token: no browser or proxy keeps a copy
@login_required
def rate(request: HttpRequest, slug: str) -> HttpResponse:
    try:
        enrollment = enrollment_for(rater=request.user, campaign_slug=slug)
    except LeaseError:
        raise Http404("not enrolled") from None
    campaign = enrollment.campaign
    config = {
        "slug": campaign.slug,
        "protocol": campaign.protocol,
        "criteria": list(CRITERIA),
        "askStrength": campaign.ask_strength,
        "reasons": campaign.reason_tags or [],
        "heartbeatMs": max(5, campaign.lease_seconds // 4) * 1000,
        # Sent as ``Authorization: Rater …`` with the rating calls (no session read per call).
        "token": rater_token_make(enrollment=enrollment),
        "api": {
            "next": reverse("annotation:api-next", args=[campaign.slug]),
            "consent": reverse("annotation:api-consent", args=[campaign.slug]),
            "heartbeat": reverse("annotation:api-heartbeat", args=[_ZERO]).replace(
                str(_ZERO), "TOKEN"),
            "judgment": reverse("annotation:api-judgment", args=[_ZERO]).replace(
                str(_ZERO), "TOKEN"),
        },
    }
    return render(request, "annotation/rate.html", {
        "campaign": campaign, "config": config,
        "pairwise": campaign.protocol == Protocol.PAIRWISE,
    })


@require_http_methods(["GET", "HEAD"])
def media(request: HttpRequest, token: str, name: str) -> HttpResponse:
    """One file of one exposure, for the rater who holds it (and nobody else)."""
    if not request.user.is_authenticated:
        raise Http404("no such clip")
    try:
        assignment_token = media_token_read(token, max_age=settings.CLIP_URL_MAX_AGE_S)
        position, part = media_file_read(name)
    except (signing.BadSignature, ValueError, TypeError):
        raise Http404("no such clip") from None
    found = exposure_clips(rater=request.user, assignment_token=assignment_token,
                           position=position)
    if found is None or found[0].status != ClipStatus.SUCCEEDED:
        raise Http404("no such clip")
    clip, shown_with = found
    # This exposure's own copy, as large as every file of its item (rendering.blinding).
    key = exposure_key(settings.SECRET_KEY, assignment_token, position, part)
    stored = [clip_stored_size(c, part) for c in shown_with]
    padding = (video_padding([clip_video_plan(c) for c in shown_with], stored, key,
                             own=clip_video_plan(clip))
               if part == "video" else Padding(size=shared_size(stored, part), key=key))
    return clip_file_response(request, clip, part, padding)


# -- researchers ------------------------------------------------------------------------------

def _researcher(request: HttpRequest) -> HttpResponse | None:
    if not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    if not is_researcher(request.user):
        return HttpResponseForbidden("researchers only")
    return None


def campaign_list(request: HttpRequest) -> HttpResponse:
    if (denied := _researcher(request)) is not None:
        return denied
    rows = [(c, campaign_summary(c))
            for c in campaigns_with_counts(campaign_list_for(request.user))]
    return render(request, "annotation/campaign_list.html", {"rows": rows})


@require_http_methods(["GET", "POST"])
def campaign_new(request: HttpRequest) -> HttpResponse:
    if (denied := _researcher(request)) is not None:
        return denied
    form = CampaignForm(request.POST or None, version=request.GET.get("version", ""))
    if request.method == "POST" and form.is_valid():
        try:
            build = campaign_create(created_by=request.user, **form.campaign_kwargs())
        except CampaignError as exc:
            form.add_error(None, str(exc))
        else:
            if build.jobs:
                versions = ", ".join(sorted({j.version.name for j in build.jobs}))
                n = len(build.jobs)
                messages.success(request, f"Sampling the missing candidates of {versions} "
                                          f"first ({n} job{'s' if n > 1 else ''} on the gpu "
                                          "queue); the items are built and their clips queued "
                                          "for rendering when they finish.")
            else:
                messages.success(request, f"{build.items} items, {build.gold} gold and "
                                          f"{build.catch} catch items; {build.clips} clips "
                                          "queued for rendering.")
            for line in build.skipped[:5]:
                messages.warning(request, f"skipped {line}")
            return redirect("annotation:campaign", slug=build.campaign.slug)
    return render(request, "annotation/campaign_new.html", {"form": form})


@require_http_methods(["GET", "POST"])
def campaign_detail(request: HttpRequest, slug: str) -> HttpResponse:
    if (denied := _researcher(request)) is not None:
        return denied
    campaign = campaign_get_for(request.user, slug)
    if campaign is None:
        raise Http404("no such campaign")
    action = request.POST.get("action", "")
    if request.method == "POST" and action == "settings":
        form = CampaignSettingsForm(request.POST, campaign=campaign)
        if form.is_valid():
            try:
                campaign_update(campaign=campaign, **form.changes())
            except CampaignError as exc:
                form.add_error(form.field_for(exc.field), str(exc))
            else:
                messages.success(request, "Settings saved.")
                return redirect("annotation:campaign", slug=slug)
        return _campaign_page(request, campaign, form, status=400)
    if request.method == "POST":
        try:
            if action == "invite":
                max_uses = request.POST.get("max_uses") or None
                invite_create(campaign=campaign, created_by=request.user,
                              label=request.POST.get("label", "")[:100],
                              max_uses=int(max_uses) if max_uses else None)
                messages.success(request, "Invite link made.")
            elif action == "status":
                campaign_set_status(campaign=campaign, status=request.POST.get("status", ""))
                messages.success(request, f"Campaign {request.POST.get('status')}.")
            elif action == "retry-sampling":
                sampling = campaign_sampling_retry(campaign=campaign, user=request.user)
                if sampling.status == SamplingStatus.FAILED:
                    messages.error(request, sampling.error)
                elif sampling.status == SamplingStatus.DONE:
                    messages.success(request, "Items built; their clips are queued for "
                                              "rendering.")
                else:
                    messages.success(request, "The failed candidate jobs are queued again.")
            elif action == "delete":
                campaign_delete(campaign=campaign)
                messages.success(request, f"Campaign {slug} deleted.")
                return redirect("annotation:campaigns")
        except (CampaignError, ValueError) as exc:
            messages.error(request, str(exc))
        return redirect("annotation:campaign", slug=slug)
    return _campaign_page(request, campaign, CampaignSettingsForm(campaign=campaign))


def _campaign_page(request: HttpRequest, campaign, settings_form: CampaignSettingsForm,
                   status: int = 200) -> HttpResponse:
    progress = campaign_progress(campaign)
    sampling = campaign_sampling_progress(campaign)
    clips = progress["clips"]
    # Reloaded while something the researcher waits for moves (the candidates, then the clips),
    # unless it shows a form's errors.
    preparing = status == 200 and campaign.status == CampaignStatus.DRAFT and (
        (sampling is not None and sampling["status"] == SamplingStatus.SAMPLING
         and not sampling["can_retry"])
        or clips["rendered"] + clips["failed"] < clips["total"])
    invites = [(i, request.build_absolute_uri(reverse("annotation:invite", args=[i.token])))
               for i in campaign.invites.order_by("-created_at")]
    return render(request, "annotation/campaign_detail.html", {
        "campaign": campaign, "progress": progress, "raters": rater_rows(campaign),
        "invites": invites, "plot": _judgments_plot(campaign),
        "ratings": sorted(progress["ratings"].items(), key=lambda kv: -kv[1]),
        "ratings_plot": bar_plot_svg(progress["ratings"], title="Bradley–Terry log-strength "
                                     "by source (0 = average)") if progress["ratings"] else "",
        "sources_json": json.dumps(campaign.sources), "settings_form": settings_form,
        "links": campaign_links(campaign.slug), "sampling": sampling, "preparing": preparing,
        "clips_percent": round(100.0 * clips["rendered"] / clips["total"], 1)
        if clips["total"] else 0.0,
        "start_refusal": campaign_start_refusal(campaign)
        if campaign.status in (CampaignStatus.DRAFT, CampaignStatus.PAUSED) else "",
    }, status=status)


def _judgments_plot(campaign) -> str:
    rows = list(Judgment.objects.filter(campaign=campaign)
                .annotate(m=TruncMinute("created_at")).values("m").annotate(n=Count("id"))
                .order_by("m").values_list("m", "n"))
    if not rows:
        return ""
    t0 = rows[0][0]
    minutes = np.array([int((m - t0).total_seconds() // 60) for m, _ in rows])
    span = int(minutes[-1]) + 1
    counts = np.bincount(minutes, weights=[n for _, n in rows], minlength=span).cumsum()
    # A count: the axis starts at zero. All judgments in one minute (a quick demo) make one
    # bucket, which line_plot_svg draws as a stem and a dot.
    return line_plot_svg({"judgments": counts}, fps=1.0, title="judgments over time (minutes)",
                         x_end_label=f"{span} min", y_min=0.0)
