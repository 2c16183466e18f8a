"""REST API of retraining rounds: start one, follow it, and act on it (cancel, resume, promote,
keep the parent); a lineage's rollback. Admins only: a round changes which policy serves."""

from __future__ import annotations

from django.urls import reverse
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import NotFound
from rest_framework.permissions import BasePermission
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation.apis import invalid_reply
from annotation.models import Campaign
from annotation.roles import is_admin
from feedback.models import Round
from feedback.services.rounds import (
    ROUND_ACTIONS,
    RoundError,
    round_start,
    version_rollback,
)

ACTIONS = ROUND_ACTIONS


class IsAdmin(BasePermission):
    message = "admins only"

    def has_permission(self, request, view) -> bool:
        return is_admin(request.user)


class RoundInput(serializers.Serializer):
    campaigns = serializers.ListField(child=serializers.SlugField(max_length=100), min_length=1,
                                      max_length=50)
    lineage = serializers.SlugField(max_length=100, required=False)
    config = serializers.DictField(required=False, help_text="see feedback/services/rounds")


class RoundOutput(serializers.Serializer):
    id = serializers.IntegerField()
    lineage = serializers.CharField()
    parent = serializers.CharField()
    campaigns = serializers.ListField(child=serializers.CharField())
    status = serializers.CharField()
    step = serializers.CharField()
    step_state = serializers.CharField()
    progress = serializers.FloatField()
    steps = serializers.DictField()
    output_version = serializers.CharField(allow_null=True)
    next_campaign = serializers.CharField(allow_null=True)
    snapshot = serializers.CharField(allow_null=True)
    critic_sha256 = serializers.CharField()
    report = serializers.DictField()
    error = serializers.CharField()
    trigger = serializers.CharField()
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)
    url = serializers.CharField()
    page = serializers.CharField()


def round_out(r: Round) -> dict:
    return RoundOutput({
        "id": r.pk, "lineage": r.lineage, "parent": r.parent.name,
        "campaigns": sorted(c.slug for c in r.campaigns.all()), "status": r.status,
        "step": r.step, "step_state": r.step_state, "progress": r.progress, "steps": r.steps,
        "output_version": r.output_version.name if r.output_version_id else None,
        "next_campaign": r.next_campaign.slug if r.next_campaign_id else None,
        "snapshot": r.snapshot.content_hash or None if r.snapshot_id else None,
        "critic_sha256": r.critic_sha, "report": r.report, "error": r.error,
        "trigger": r.trigger, "created_at": r.created_at, "finished_at": r.finished_at,
        "url": reverse("feedback:api-round", kwargs={"round_id": r.pk}),
        "page": reverse("feedback:round", kwargs={"round_id": r.pk}),
    }).data


def _rounds():
    return (Round.objects.select_related("parent", "output_version", "next_campaign", "snapshot")
            .prefetch_related("campaigns").order_by("-pk"))


def _get(round_id: int) -> Round:
    r = _rounds().filter(pk=round_id).first()
    if r is None:
        raise NotFound("no such round")
    return r


def _refused(exc: RoundError) -> Response:
    return Response({"error": "refused", "detail": str(exc)}, status=409)


class RoundListApi(APIView):
    permission_classes = [IsAdmin]

    @extend_schema(responses=RoundOutput(many=True), summary="Retraining rounds, newest first")
    def get(self, request) -> Response:
        return Response([round_out(r) for r in _rounds()[:200]])

    @extend_schema(request=RoundInput, responses={
        202: RoundOutput, 400: OpenApiResponse(description="the detail names the field"),
        409: OpenApiResponse(description="refused: a round open on the lineage, no promoted "
                                         "version, …")},
        summary="Start a round over campaigns' judgments, from the promoted version")
    def post(self, request) -> Response:
        data = RoundInput(data=request.data)
        if not data.is_valid():
            return invalid_reply(data)
        slugs = data.validated_data["campaigns"]
        campaigns = list(Campaign.objects.filter(slug__in=slugs))
        missing = sorted(set(slugs) - {c.slug for c in campaigns})
        if missing:
            return Response({"error": "invalid", "field": "campaigns",
                             "detail": f"campaigns: no campaign {missing[0]!r}"}, status=400)
        try:
            r = round_start(campaigns=campaigns, user=request.user, trigger="api",
                            config=data.validated_data.get("config"),
                            lineage=data.validated_data.get("lineage"))
        except RoundError as exc:
            status = 400 if str(exc).startswith(("config", "campaigns")) else 409
            return Response({"error": "invalid" if status == 400 else "refused",
                             "detail": str(exc)}, status=status)
        return Response(round_out(_get(r.pk)), status=202)


class RoundDetailApi(APIView):
    permission_classes = [IsAdmin]

    @extend_schema(responses=RoundOutput, summary="A round's steps, progress, report and log")
    def get(self, request, round_id: int) -> Response:
        r = _get(round_id)
        return Response({**round_out(r), "log": r.log, "curves": r.curves})


class RoundActionInput(serializers.Serializer):
    action = serializers.ChoiceField(choices=sorted(ACTIONS))


class RoundActionApi(APIView):
    permission_classes = [IsAdmin]

    @extend_schema(request=RoundActionInput, responses={
        200: RoundOutput, 409: OpenApiResponse(description="not possible in this state")},
        summary="Cancel, resume, promote its version, or keep the parent")
    def post(self, request, round_id: int) -> Response:
        data = RoundActionInput(data=request.data)
        if not data.is_valid():
            return invalid_reply(data)
        r = _get(round_id)
        try:
            ACTIONS[data.validated_data["action"]](rnd=r, user=request.user)
        except RoundError as exc:
            return _refused(exc)
        return Response(round_out(_get(round_id)))


class RollbackApi(APIView):
    permission_classes = [IsAdmin]

    @extend_schema(request=None, responses={200: OpenApiResponse(description="the promotion"),
                                            409: OpenApiResponse(description="nothing to "
                                                                             "roll back to")},
                   summary="Promote again the version promoted before the lineage's current one")
    def post(self, request, lineage: str) -> Response:
        try:
            p = version_rollback(lineage=lineage, user=request.user)
        except RoundError as exc:
            return _refused(exc)
        return Response({"lineage": p.lineage, "promoted": p.version.name,
                         "retired": p.previous.name if p.previous_id else None,
                         "action": p.action, "at": p.at})
