"""REST API: the rater's three calls (next, heartbeat, judgment) and campaign management.

Thin views: input serializers check shapes, services decide, output is plain data. Every
queryset is scoped to the caller (``annotation.selectors``).
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.core import signing
from django.urls import reverse
from django.utils.cache import patch_cache_control
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.authentication import BaseAuthentication, SessionAuthentication
from rest_framework.exceptions import APIException, AuthenticationFailed, NotFound
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.permissions import BasePermission
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation.models import CRITERIA, CampaignStatus, Protocol
from annotation.parsers import BoundedJSONParser
from annotation.rater_calls import (
    Reply,
    call_heartbeat,
    call_judgment,
    call_next,
    refused,
)
from annotation.roles import is_researcher
from annotation.selectors import (
    campaign_get_for,
    campaign_list_for,
    campaign_progress,
)
from annotation.services.campaign_settings import FIXED, INT_MAX
from annotation.services.campaigns import (
    CampaignError,
    CampaignInUse,
    campaign_create,
    campaign_delete,
    campaign_sampling_progress,
    campaign_set_status,
    campaign_update,
    invite_create,
)
from annotation.services.enrollment import consent_give, rater_token_read
from annotation.services.judgments import CHOICES
from annotation.services.scheduling import LeaseError, enrollment_for
from policy.models import Dataset


def _reply(reply: Reply) -> Response:
    status_code, body = reply
    return Response(body, status=status_code)


class IsResearcher(BasePermission):
    message = "researchers only"

    def has_permission(self, request, view) -> bool:
        return is_researcher(request.user)


# -- rating -----------------------------------------------------------------------------------

_ERRORS = {code: OpenApiResponse(description=text) for code, text in {
    400: "malformed request (the detail names the field)",
    403: "another rater's lease",
    404: "unknown lease or campaign",
    409: "answered already, or the idempotency key was used for another item",
    410: "the lease expired",
}.items()}


class RaterTokenAuthentication(BaseAuthentication):
    """``Authorization: Rater <token>``: the rater page's credential for the rating calls (see
    ``rater_token_make``). Checked without touching the database; the session still works for
    other clients (then with the CSRF token, as DRF's session authentication requires)."""

    keyword = "Rater"

    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header.startswith(self.keyword + " "):
            return None
        try:
            rater_id, campaign_id = rater_token_read(header[len(self.keyword) + 1:].strip())
        except signing.SignatureExpired:
            raise AuthenticationFailed("the rating session expired; reload the page",
                                       code="token_expired") from None
        except signing.BadSignature:
            raise AuthenticationFailed("not a valid rater token", code="bad_token") from None
        return RaterPrincipal(rater_id, campaign_id), None

    def authenticate_header(self, request) -> str:
        return self.keyword


class RaterTokenScheme(OpenApiAuthenticationExtension):
    """The rater token in the OpenAPI schema (registered by being defined)."""

    target_class = RaterTokenAuthentication
    name = "raterToken"

    def get_security_definition(self, auto_schema) -> dict:
        return {"type": "apiKey", "in": "header", "name": "Authorization",
                "description": "`Rater <token>`: the token the rate page is given (12 hours, "
                               "one campaign's rating calls)."}


@dataclass(frozen=True)
class RaterPrincipal:
    """Who a rater token speaks for: the rating services need the rater's id, and the campaign
    bounds what the token may touch."""

    pk: int
    campaign_id: int
    is_authenticated = True
    is_anonymous = False


class JsonOnly(BaseContentNegotiation):
    """The rating calls speak JSON only: no Accept header parsing (a measurable share of a
    call that does one database round trip)."""

    def select_parser(self, request, parsers):
        return parsers[0]

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class RequestTooLarge(APIException):
    status_code = 413
    default_code = "too_large"


class NotCached(APIView):
    """A rater's call: the replies carry token- or session-bound data (leases, the rater's
    progress), kept by no cache. annotation/fastpath.py sends the same header."""

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        patch_cache_control(response, no_store=True)
        return response


class RaterApi(NotCached):
    """The rating calls: the lean path (token or session, JSON in and out, nothing else)."""

    authentication_classes = [RaterTokenAuthentication, SessionAuthentication]
    parser_classes = [BoundedJSONParser]
    renderer_classes = [JSONRenderer]
    content_negotiation_class = JsonOnly
    throttle_classes: list = []

    def initial(self, request, *args, **kwargs) -> None:
        # DRF's parsers read the stream without Django's size limit: the limit here.
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if limit is not None and length > limit:
            raise RequestTooLarge(f"the request body is {length} bytes, at most {limit}")
        super().initial(request, *args, **kwargs)

    def campaign_id(self) -> int | None:
        """The campaign a rater token is bound to (none for a session)."""
        return getattr(self.request.user, "campaign_id", None)


class NextOutputSerializer(serializers.Serializer):
    state = serializers.ChoiceField(
        choices=["rating", "finished", "blocked", "paused", "consent", "waiting", "cool_down"],
        help_text="rating: items to answer. finished: nothing is left for this rater. waiting: "
                  "the items left are held by other raters for now; ask again after "
                  "retry_after. cool_down: this rater's leases kept running out unanswered; "
                  "no new items until retry_after. blocked, paused, consent: as named")
    detail = serializers.CharField(allow_blank=True,
                                   help_text="why no items are given, in words for the rater")
    retry_after = serializers.IntegerField(
        help_text="waiting, cool_down: seconds after which asking again may give items; else 0")
    done = serializers.IntegerField(help_text="items this rater has answered")
    quota = serializers.IntegerField(help_text="items one rater answers at most")
    warning = serializers.CharField(allow_blank=True)
    completion_code = serializers.CharField(
        allow_blank=True, help_text="only once finished, and only after at least one answer")
    completion_url = serializers.CharField(allow_blank=True)
    assignments = serializers.ListField(
        child=serializers.DictField(),
        help_text="live leases, first on screen: {id, speaker: {video, poster}, "
                  "clips: [{video, poster}] in the order shown, expires_in}")


class NextApi(RaterApi):
    @extend_schema(request=None, responses={200: NextOutputSerializer, 404: _ERRORS[404]},
                   summary="The items to rate now (leases them)")
    def post(self, request, slug: str) -> Response:
        return _reply(call_next(request.user, slug, self.campaign_id()))


class ConsentApi(NotCached):
    @extend_schema(request=None, responses={204: None, 404: _ERRORS[404]},
                   summary="Record the rater's consent to the campaign's terms")
    def post(self, request, slug: str) -> Response:
        try:
            enrollment = enrollment_for(rater=request.user, campaign_slug=slug)
        except LeaseError as exc:
            return _reply(refused(exc))
        consent_give(enrollment=enrollment)
        return Response(status=status.HTTP_204_NO_CONTENT)


class HeartbeatApi(RaterApi):
    @extend_schema(
        request=None,
        responses={200: inline_serializer("Heartbeat", {"expires_at": serializers.DateTimeField()}),
                   **{k: v for k, v in _ERRORS.items() if k != 400}},
        summary="Keep the rater's leases alive while clips play")
    def post(self, request, token: str) -> Response:
        return _reply(call_heartbeat(request.user, str(token), self.campaign_id()))


class JudgmentApi(RaterApi):
    class JudgmentInputSerializer(serializers.Serializer):
        """Documents the body; the service checks it (one pass, the field named on error)."""

        idempotency_key = serializers.UUIDField(
            help_text="made by the browser when the rater answered; resend it on retry")
        choice = serializers.ChoiceField(choices=CHOICES, required=False,
                                         help_text="pairwise: the side pressed")
        strength = serializers.IntegerField(min_value=1, max_value=3, required=False,
                                            allow_null=True)
        reasons = serializers.ListField(child=serializers.CharField(max_length=60),
                                        required=False, max_length=20)
        scores = serializers.ListField(
            child=serializers.DictField(child=serializers.IntegerField(min_value=1,
                                                                       max_value=5)),
            required=False, max_length=8,
            help_text=f"group: one {{{', '.join(CRITERIA)}}} per clip, in the order shown")
        decision_ms = serializers.IntegerField(min_value=0)
        viewing_ms = serializers.IntegerField(min_value=0, required=False, default=0)
        playback = serializers.DictField(required=False)

    class JudgmentOutputSerializer(serializers.Serializer):
        stored = serializers.BooleanField(help_text="false: a retry; the earlier answer stands")
        judgment = serializers.IntegerField()
        next = NextOutputSerializer(
            required=False, help_text="the rater's items now (as the next call answers), so "
                                      "the page needs no second call")

    @extend_schema(request=JudgmentInputSerializer,
                   responses={201: JudgmentOutputSerializer, 200: JudgmentOutputSerializer,
                              **_ERRORS},
                   summary="Answer a leased item (exactly once); answers with the next items")
    def post(self, request, token: str) -> Response:
        return _reply(call_judgment(request.user, str(token), request.data, self.campaign_id()))


# -- campaigns (researchers) ------------------------------------------------------------------

class CampaignOutput(serializers.Serializer):
    slug = serializers.SlugField()
    name = serializers.CharField()
    dataset = serializers.CharField(source="dataset.name")
    status = serializers.CharField()
    protocol = serializers.CharField()
    group_size = serializers.IntegerField()
    sources = serializers.JSONField()
    overlap = serializers.IntegerField()
    target_items = serializers.IntegerField()
    per_rater_limit = serializers.IntegerField()
    lease_seconds = serializers.IntegerField()
    active_order = serializers.BooleanField()
    gold_rate = serializers.FloatField()
    catch_rate = serializers.FloatField()
    repeat_rate = serializers.FloatField()
    warn_after = serializers.IntegerField()
    block_after = serializers.IntegerField()
    ask_strength = serializers.BooleanField()
    reason_tags = serializers.JSONField()
    criteria_weights = serializers.JSONField()
    instructions = serializers.CharField()
    consent_text = serializers.CharField()
    crowd_param = serializers.CharField()
    completion_code = serializers.CharField()
    completion_url = serializers.CharField()
    created_at = serializers.DateTimeField()


class CampaignInput(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    slug = serializers.SlugField(max_length=100)
    dataset = serializers.SlugField(help_text="dataset name")
    sources = serializers.ListField(child=serializers.DictField(), min_length=1, max_length=8)
    split = serializers.CharField(default="test")
    protocol = serializers.ChoiceField(choices=Protocol.choices, default=Protocol.PAIRWISE)
    group_size = serializers.IntegerField(min_value=2, max_value=8, default=5)
    overlap = serializers.IntegerField(min_value=1, max_value=50, default=3)
    target_items = serializers.IntegerField(min_value=1, max_value=100_000, default=100)
    per_rater_limit = serializers.IntegerField(min_value=1, max_value=INT_MAX, default=50)
    lease_seconds = serializers.IntegerField(min_value=15, max_value=3600, default=90)
    active_order = serializers.BooleanField(default=True)
    gold_rate = serializers.FloatField(min_value=0, max_value=0.5, default=0.1)
    catch_rate = serializers.FloatField(min_value=0, max_value=0.5, default=0.05)
    repeat_rate = serializers.FloatField(min_value=0, max_value=0.5, default=0.05)
    warn_after = serializers.IntegerField(min_value=1, max_value=1000, default=2)
    block_after = serializers.IntegerField(min_value=1, max_value=1000, default=5)
    ask_strength = serializers.BooleanField(default=True)
    reason_tags = serializers.ListField(child=serializers.CharField(max_length=60),
                                        required=False, max_length=20)
    criteria_weights = serializers.DictField(child=serializers.FloatField(min_value=0),
                                             required=False)
    instructions = serializers.CharField(required=False, allow_blank=True, max_length=20_000)
    consent_text = serializers.CharField(required=False, allow_blank=True, max_length=20_000)
    crowd_param = serializers.RegexField(r"^[A-Za-z0-9_]{0,40}$", required=False,
                                         allow_blank=True)
    completion_code = serializers.CharField(required=False, max_length=40)
    completion_url = serializers.URLField(required=False, allow_blank=True)


_MADE_ONCE = ("slug", "dataset", "split")  # what the campaign and its items were made from


class CampaignPatch(CampaignInput):
    """The settings of a made campaign; ``campaign_update`` decides which may change now (the
    items' design only while there are none, what answers record only in draft, nothing but
    the name once closed)."""

    def get_fields(self):
        fields = super().get_fields()
        return {k: v for k, v in fields.items() if k not in _MADE_ONCE}


def invalid_reply(serializer) -> Response:
    """400 naming the first field a serializer refused (the feedback app's APIs use it too)."""
    field, problems = next(iter(serializer.errors.items()))
    problem = problems[0] if isinstance(problems, list) else problems
    return Response({"error": "invalid", "detail": f"{field}: {problem}", "field": field},
                    status=400)


def _refused(exc: CampaignError) -> Response:
    """A service's refusal: 400 for a value or a change not allowed, 409 where what the
    campaign holds stands in the way (judgments, raters' leases); the field and the reason."""
    return Response({"error": exc.code, "detail": str(exc), "field": exc.field},
                    status=409 if isinstance(exc, CampaignInUse) else 400)


class CampaignListApi(APIView):
    permission_classes = [IsResearcher]

    @extend_schema(responses=CampaignOutput(many=True), summary="Campaigns you may see")
    def get(self, request) -> Response:
        return Response(CampaignOutput(campaign_list_for(request.user), many=True).data)

    @extend_schema(request=CampaignInput, responses={201: CampaignOutput, 400: _ERRORS[400]},
                   summary="Make a campaign (draft) with its items; clips are queued. Missing "
                           "candidates are sampled first: `built.sampling_jobs` lists the "
                           "jobs, and the items come when they finish (see progress)")
    def post(self, request) -> Response:
        data = CampaignInput(data=request.data)
        if not data.is_valid():
            return invalid_reply(data)
        fields = dict(data.validated_data)
        dataset = Dataset.objects.filter(name=fields.pop("dataset")).first()
        if dataset is None:
            return Response({"error": "invalid", "detail": "dataset: no such dataset",
                             "field": "dataset"}, status=400)
        try:
            build = campaign_create(dataset=dataset, created_by=request.user, **fields)
        except CampaignError as exc:
            return _refused(exc)
        body = CampaignOutput(build.campaign).data
        body["built"] = {"items": build.items, "gold": build.gold, "catch": build.catch,
                         "clips": build.clips, "skipped": build.skipped[:50],
                         "sampling_jobs": [j.pk for j in build.jobs]}
        return Response(body, status=201)


class CampaignDetailApi(APIView):
    permission_classes = [IsResearcher]

    def _get(self, request, slug: str):
        campaign = campaign_get_for(request.user, slug)
        if campaign is None:
            raise NotFound("no such campaign")
        return campaign

    @extend_schema(responses=CampaignOutput, summary="One campaign")
    def get(self, request, slug: str) -> Response:
        return Response(CampaignOutput(self._get(request, slug)).data)

    @extend_schema(request=CampaignPatch, responses={200: CampaignOutput, 400: _ERRORS[400]},
                   summary="Change a campaign's settings (nothing changes if one is refused)")
    def patch(self, request, slug: str) -> Response:
        campaign = self._get(request, slug)
        data = CampaignPatch(data=request.data, partial=True)
        if not data.is_valid():
            return invalid_reply(data)
        for key in request.data:
            if key not in data.fields:
                reason = FIXED.get(key) or (
                    "cannot be changed after the campaign is made" if key in _MADE_ONCE
                    else "is not a setting this API changes")
                return Response({"error": "invalid", "detail": f"{key}: {reason}",
                                 "field": key}, status=400)
        try:
            campaign = campaign_update(campaign=campaign, **data.validated_data)
        except CampaignError as exc:
            return _refused(exc)
        return Response(CampaignOutput(campaign).data)

    @extend_schema(responses={204: None, 409: OpenApiResponse(
        description="refused: it has judgments (close it instead), is serving raters or has "
                    "items on raters' screens; the detail says which")},
        summary="Delete a campaign that has no judgments")
    def delete(self, request, slug: str) -> Response:
        try:
            campaign_delete(campaign=self._get(request, slug))
        except CampaignError as exc:
            return _refused(exc)
        return Response(status=204)


class CampaignProgressApi(APIView):
    permission_classes = [IsResearcher]

    @extend_schema(responses=inline_serializer("Progress", {
        "status": serializers.CharField(), "percent": serializers.FloatField(),
        "items": serializers.IntegerField(), "judgments": serializers.IntegerField(),
        "judgments_needed": serializers.IntegerField(), "live_leases": serializers.IntegerField(),
        "probes": serializers.DictField(), "raters": serializers.DictField(),
        "clips": serializers.DictField(), "ratings": serializers.DictField(),
        "sampling": serializers.DictField(allow_null=True, help_text=(
            "the candidate jobs the campaign waits for, each with its progress; null when it "
            "was built from candidates that existed"))}),
        summary="Progress, live leases, probe results and current ratings")
    def get(self, request, slug: str) -> Response:
        campaign = campaign_get_for(request.user, slug)
        if campaign is None:
            raise NotFound("no such campaign")
        return Response({**campaign_progress(campaign),
                         "sampling": campaign_sampling_progress(campaign)})


class CampaignStatusApi(APIView):
    permission_classes = [IsResearcher]

    @extend_schema(request=inline_serializer("StatusChange", {
        "status": serializers.ChoiceField(choices=CampaignStatus.choices)}),
        responses={200: CampaignOutput, 400: _ERRORS[400]},
        summary="Start, pause, resume or close")
    def post(self, request, slug: str) -> Response:
        campaign = campaign_get_for(request.user, slug)
        if campaign is None:
            raise NotFound("no such campaign")
        try:
            body = request.data if isinstance(request.data, dict) else {}
            campaign = campaign_set_status(campaign=campaign,
                                           status=str(body.get("status", "")))
        except CampaignError as exc:
            return _refused(exc)
        return Response(CampaignOutput(campaign).data)


class InviteApi(APIView):
    permission_classes = [IsResearcher]

    class InviteInputSerializer(serializers.Serializer):
        label = serializers.CharField(max_length=100, required=False, allow_blank=True)
        max_uses = serializers.IntegerField(min_value=1, max_value=INT_MAX, required=False,
                                            allow_null=True)
        expires_at = serializers.DateTimeField(required=False, allow_null=True)

    @extend_schema(request=InviteInputSerializer, responses={201: inline_serializer("Invite", {
        "url": serializers.CharField(), "label": serializers.CharField()})},
        summary="Make an invite link for raters")
    def post(self, request, slug: str) -> Response:
        campaign = campaign_get_for(request.user, slug)
        if campaign is None:
            raise NotFound("no such campaign")
        data = self.InviteInputSerializer(data=request.data)
        if not data.is_valid():
            return invalid_reply(data)
        try:
            invite = invite_create(campaign=campaign, created_by=request.user,
                                   **data.validated_data)
        except CampaignError as exc:
            return _refused(exc)
        url = request.build_absolute_uri(reverse("annotation:invite", args=[invite.token]))
        return Response({"url": url, "label": invite.label}, status=201)

