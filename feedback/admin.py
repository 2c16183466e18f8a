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


# --- rounds ----------------------------------------------------------------------------------

from django.contrib import messages  # noqa: E402
from django.http import HttpRequest  # noqa: E402
from django.template.response import TemplateResponse  # noqa: E402
from django.urls import reverse  # noqa: E402
from django.utils.html import format_html  # noqa: E402

from annotation.models import Campaign  # noqa: E402
from feedback.models import Promotion, Round, RoundSchedule  # noqa: E402
from feedback.services.rounds import (  # noqa: E402
    RoundError,
    round_config_clean,
    round_start,
    version_promote,
    version_rollback,
)
from policy.admin import PolicyVersionAdmin  # noqa: E402
from policy.models import PolicyVersion  # noqa: E402


@admin.register(Round)
class RoundAdmin(ReadOnlyAdmin):
    list_display = ("id", "lineage", "parent", "status", "step", "progress_bar",
                    "output_version", "trigger", "created_at")
    list_filter = ("status", "lineage")

    @admin.display(description="progress")
    def progress_bar(self, obj: Round) -> str:
        return format_html('<progress max="100" value="{}"></progress> {}% · '
                           '<a href="{}">page</a>', obj.progress, round(obj.progress),
                           reverse("feedback:round", kwargs={"round_id": obj.pk}))


@admin.register(Promotion)
class PromotionAdmin(ReadOnlyAdmin):
    list_display = ("at", "lineage", "action", "version", "previous", "automatic", "by", "round")
    list_filter = ("lineage", "action")


@admin.register(RoundSchedule)
class RoundScheduleAdmin(admin.ModelAdmin):
    list_display = ("campaign", "every_judgments", "enabled", "created_at")

    def save_model(self, request, obj, form, change) -> None:
        try:
            round_config_clean(obj.config)  # refuse a config the rounds would refuse
        except RoundError as exc:
            messages.error(request, str(exc))
            obj.enabled = False
        super().save_model(request, obj, form, change)


@admin.action(description="Start a retraining round over the selected campaigns")
def start_round(modeladmin, request: HttpRequest, queryset):
    """Asks for a confirmation first (the page lists what the round will read)."""
    campaigns = list(queryset)
    if request.POST.get("confirm") == "yes":
        try:
            r = round_start(campaigns=campaigns, user=request.user, trigger="admin")
        except RoundError as exc:
            modeladmin.message_user(request, str(exc), level=messages.ERROR)
            return None
        modeladmin.message_user(request, format_html(
            'Round #{} started from {}: <a href="{}">follow it</a>', r.pk, r.parent.name,
            reverse("feedback:round", kwargs={"round_id": r.pk})))
        return None
    return TemplateResponse(request, "feedback/admin_start_round.html", {
        **modeladmin.admin_site.each_context(request), "campaigns": campaigns,
        "action": "start_round", "title": "Start a retraining round?",
        "selected": [c.pk for c in campaigns]})


def _add_campaign_action() -> None:
    campaign_admin = admin.site._registry.get(Campaign)
    if campaign_admin is not None and "start_round" not in (campaign_admin.actions or ()):
        campaign_admin.actions = (*(campaign_admin.actions or ()), start_round)


_add_campaign_action()


class RecordedVersionAdmin(PolicyVersionAdmin):
    """Versions, where promoting and rolling back are recorded (``Promotion`` rows)."""

    actions = ("promote", "rollback", "retire")

    @admin.action(description="Promote (retires the lineage's current version; recorded)")
    def promote(self, request: HttpRequest, queryset) -> None:
        for version in queryset:
            try:
                version_promote(version=version, user=request.user)
            except RoundError as exc:
                self.message_user(request, str(exc), level=messages.ERROR)

    @admin.action(description="Roll back the selected versions' lineages to their previous "
                              "promoted version")
    def rollback(self, request: HttpRequest, queryset) -> None:
        for lineage in sorted({v.lineage for v in queryset}):
            try:
                p = version_rollback(lineage=lineage, user=request.user)
                self.message_user(request, f"{lineage}: {p.version.name} promoted again")
            except RoundError as exc:
                self.message_user(request, str(exc), level=messages.ERROR)


admin.site.unregister(PolicyVersion)
admin.site.register(PolicyVersion, RecordedVersionAdmin)
