"""REST API of snapshots: ask for one (a job), follow it, download it as one archive.

Researchers and admins only; each snapshot is visible to those who may see all its campaigns
(``annotation.selectors.campaign_list_for``). Thin views: the serializer checks shapes,
``feedback.services.snapshots`` decides.
"""

from __future__ import annotations

from django.http import StreamingHttpResponse
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import NotFound
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation.apis import IsResearcher, invalid_reply
from feedback import export
from feedback.models import Snapshot
from feedback.services.snapshots import (
    QC_POLICIES,
    SnapshotError,
    snapshot_folder,
    snapshot_get_for,
    snapshot_list_for,
    snapshot_request,
)

ARCHIVES = {"tar.gz": "application/gzip", "zip": "application/zip"}


class SnapshotInput(serializers.Serializer):
    campaigns = serializers.ListField(child=serializers.SlugField(max_length=100), min_length=1,
                                      max_length=50)
    qc = serializers.ChoiceField(choices=QC_POLICIES, default="trusted")
    since = serializers.DateTimeField(required=False, allow_null=True)
    until = serializers.DateTimeField(required=False, allow_null=True)
    sources = serializers.ListField(child=serializers.CharField(max_length=200), required=False,
                                    max_length=50)
    test_fraction = serializers.FloatField(required=False, min_value=0.0, max_value=0.99)
    name = serializers.CharField(required=False, allow_blank=True, max_length=200)


class SnapshotOutput(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    status = serializers.CharField()
    progress = serializers.FloatField()
    error = serializers.CharField()
    filters = serializers.DictField()
    counts = serializers.DictField()
    content_hash = serializers.CharField()
    size_bytes = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)
    url = serializers.CharField()
    archive = serializers.CharField(allow_null=True)


def _out(s: Snapshot) -> dict:
    done = snapshot_folder(s) is not None
    return SnapshotOutput({
        "id": s.pk, "name": s.name, "status": s.status, "progress": s.progress,
        "error": s.error, "filters": s.filters, "counts": s.counts,
        "content_hash": s.content_hash, "size_bytes": s.size_bytes, "created_at": s.created_at,
        "finished_at": s.finished_at,
        "url": reverse("feedback:api-snapshot", kwargs={"snapshot_id": s.pk}),
        "archive": reverse("feedback:api-snapshot-archive",
                           kwargs={"snapshot_id": s.pk}) if done else None,
    }).data


def _get(request, snapshot_id: int) -> Snapshot:
    s = snapshot_get_for(request.user, snapshot_id)
    if s is None:
        raise NotFound("no such snapshot")
    return s


class SnapshotListApi(APIView):
    permission_classes = [IsResearcher]

    @extend_schema(responses=SnapshotOutput(many=True), summary="Snapshots you may see")
    def get(self, request) -> Response:
        return Response([_out(s) for s in snapshot_list_for(request.user)])

    @extend_schema(request=SnapshotInput, responses={
        202: SnapshotOutput, 400: OpenApiResponse(description="the detail names the field")},
        summary="Ask for a snapshot of judgments (a job; the same filters in progress give "
                "the same job)")
    def post(self, request) -> Response:
        data = SnapshotInput(data=request.data)
        if not data.is_valid():
            return invalid_reply(data)
        filters = dict(data.validated_data)
        name = filters.pop("name", "")
        try:
            s = snapshot_request(filters=filters, user=request.user, name=name)
        except SnapshotError as exc:
            return Response({"error": exc.code, "detail": str(exc), "field": exc.field},
                            status=400)
        return Response(_out(s), status=202)


class SnapshotDetailApi(APIView):
    permission_classes = [IsResearcher]

    @extend_schema(responses=SnapshotOutput, summary="A snapshot's status, progress and counts")
    def get(self, request, snapshot_id: int) -> Response:
        return Response(_out(_get(request, snapshot_id)))


class _AnyAccept(BaseContentNegotiation):
    """The archive is what it is whatever the client accepts (errors are JSON)."""

    def select_parser(self, request, parsers):
        return parsers[0] if parsers else None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class SnapshotArchiveApi(APIView):
    permission_classes = [IsResearcher]
    content_negotiation_class = _AnyAccept

    @extend_schema(parameters=[OpenApiParameter("type", str, enum=list(ARCHIVES),
                                                default="tar.gz")],
                   responses={(200, "application/gzip"): OpenApiTypes.BINARY,
                              409: OpenApiResponse(description="not finished")},
                   summary="The snapshot's folder as one .tar.gz or .zip, streamed")
    def get(self, request, snapshot_id: int):
        s = _get(request, snapshot_id)
        kind = request.query_params.get("type", "tar.gz")
        if kind not in ARCHIVES:
            return Response({"error": "invalid", "field": "type",
                             "detail": f"type: expected one of {', '.join(ARCHIVES)}"},
                            status=400)
        folder = snapshot_folder(s)
        if folder is None:
            return Response({"error": "not_ready", "detail": f"snapshot {s.pk} is {s.status}"
                             + (f": {s.error}" if s.error else "; no files yet")}, status=409)
        prefix = f"snapshot-{s.content_hash[:12]}"
        stream = (export.tar_gz_stream if kind == "tar.gz" else export.zip_stream)(folder, prefix)
        response = StreamingHttpResponse(stream, content_type=ARCHIVES[kind])
        response["Content-Disposition"] = f'attachment; filename="{prefix}.{kind}"'
        return response
