from django.contrib import admin

from feedback.models import QcDecision, QcRun, Snapshot


class _ReadOnly(admin.ModelAdmin):
    """Rows that only the services write: decisions are append-only, jobs are the workers'."""

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(QcDecision)
class QcDecisionAdmin(_ReadOnly):
    list_display = ("id", "campaign", "enrollment", "status", "source", "reason", "created_at")
    list_filter = ("status", "source", "campaign")


@admin.register(QcRun)
class QcRunAdmin(_ReadOnly):
    list_display = ("id", "campaign", "status", "progress", "judgments_seen", "created_at")
    list_filter = ("status",)


@admin.register(Snapshot)
class SnapshotAdmin(_ReadOnly):
    list_display = ("id", "name", "status", "progress", "content_hash", "created_at")
    list_filter = ("status",)
