"""REST API of quality control: run it, read it, override a rater's status.

Researchers and admins who may see the campaign (``campaign_get_for``); raters get 403, other
researchers' campaigns 404.
"""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.exceptions import NotFound
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation.apis import IsResearcher, invalid_reply
from annotation.models import Campaign, Enrollment
from annotation.selectors import campaign_get_for
from feedback.services.qc import (
    MAX_REASON,
    OVERRIDE_STATUSES,
    QcError,
    latest_run,
    qc_override,
    qc_run_create,
    rater_table,
    run_summary,
)


def _campaign(request, slug: str) -> Campaign:
    campaign = campaign_get_for(request.user, slug)
    if campaign is None:
        raise NotFound("no such campaign")
    return campaign


class QcApi(APIView):
    permission_classes = [IsResearcher]

    @extend_schema(
        responses=inline_serializer("QualityControl", {
            "run": serializers.DictField(allow_null=True, help_text=(
                "the latest run: id, status, progress, campaign figures (agreement, alpha, "
                "cycles), statuses, thresholds")),
            "raters": serializers.ListField(child=serializers.DictField(), help_text=(
                "one row per enrolment: pseudonym, figures, status, source, reason")),
        }),
        summary="Quality control: the latest run and the rater table")
    def get(self, request, slug: str) -> Response:
        campaign = _campaign(request, slug)
        return Response({"run": run_summary(latest_run(campaign=campaign)),
                         "raters": rater_table(campaign=campaign)})

    @extend_schema(request=None, responses={202: inline_serializer("QcRunQueued", {
        "run": serializers.IntegerField(), "status": serializers.CharField()})},
        summary="Run quality control now (the run already queued or running, if any)")
    def post(self, request, slug: str) -> Response:
        run = qc_run_create(campaign=_campaign(request, slug), user=request.user)
        return Response({"run": run.pk, "status": run.status}, status=202)


class RaterStatusApi(APIView):
    permission_classes = [IsResearcher]

    class InputSerializer(serializers.Serializer):
        status = serializers.ChoiceField(choices=list(OVERRIDE_STATUSES), help_text=(
            "trusted, flagged or excluded; auto clears an override"))
        reason = serializers.CharField(max_length=MAX_REASON)

    @extend_schema(request=InputSerializer, responses={
        201: inline_serializer("QcDecisionOut", {
            "id": serializers.IntegerField(), "status": serializers.CharField(),
            "source": serializers.CharField(), "reason": serializers.CharField()}),
        400: OpenApiResponse(description="the detail names the field"),
        404: OpenApiResponse(description="no such campaign or rater")},
        summary="Override a rater's status, with the reason")
    def post(self, request, slug: str, pseudonym) -> Response:
        campaign = _campaign(request, slug)
        enrollment = Enrollment.objects.filter(campaign=campaign, pseudonym=pseudonym).first()
        if enrollment is None:
            raise NotFound("no such rater in this campaign")
        data = self.InputSerializer(data=request.data)
        if not data.is_valid():
            return invalid_reply(data)
        try:
            decision = qc_override(enrollment=enrollment, user=request.user,
                                   **data.validated_data)
        except QcError as exc:
            return Response({"error": "invalid", "detail": str(exc),
                             "field": str(exc).split(":", 1)[0]}, status=400)
        return Response({"id": decision.pk, "status": decision.status,
                         "source": decision.source, "reason": decision.reason}, status=201)
