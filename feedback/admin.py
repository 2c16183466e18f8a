from django.contrib import admin

from annotation.admin import ReadOnlyAdmin
from feedback.models import QcDecision, QcRun, Snapshot


# Decisions are append-only and jobs are the workers': nothing is edited here.
@admin.register(QcDecision)
class QcDecisionAdmin(ReadOnlyAdmin):
    list_display = ("id", "campaign", "enrollment", "status", "source", "reason", "created_at")
    list_filter = ("status", "source", "campaign")


@admin.register(QcRun)
class QcRunAdmin(ReadOnlyAdmin):
    list_display = ("id", "campaign", "status", "progress", "judgments_seen", "created_at")
    list_filter = ("status",)


@admin.register(Snapshot)
class SnapshotAdmin(ReadOnlyAdmin):
    list_display = ("id", "name", "status", "progress", "content_hash", "created_at")
    list_filter = ("status",)
