from django.contrib import admin, messages
from django.urls import NoReverseMatch
from django.utils.html import format_html

from rendering.models import Clip, ClipStatus
from rendering.services import clip_retry
from rendering.signing import clip_url


@admin.register(Clip)
class ClipAdmin(admin.ModelAdmin):
    list_display = ("id", "kind", "face_model", "status", "progress_bar", "n_frames", "fps",
                    "clipped_values", "created_at", "short_error")
    list_filter = ("status", "kind", "face_model")
    search_fields = ("content_hash", "public_id", "sequence_sha", "mp4_sha")
    ordering = ("-created_at",)
    actions = ("retry_failed",)
    readonly_fields = [f.name for f in Clip._meta.fields] + ["preview"]
    fieldsets = (
        (None, {"fields": ("preview", "kind", "face_model", "status", "progress", "error",
                           "attempts")}),
        ("Inputs", {"fields": ("content_hash", "public_id", "sequence_sha", "fps", "n_frames",
                               "settings", "media", "rig_fingerprint", "clipped")}),
        ("Output", {"fields": ("mp4_sha", "poster_sha", "mp4_bytes", "render_seconds",
                               "created_at", "started_at", "finished_at")}),
    )

    def has_add_permission(self, request) -> bool:
        return False  # clips are requested by the services, never typed in

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="progress")
    def progress_bar(self, obj: Clip) -> str:
        if obj.status == ClipStatus.FAILED:
            return format_html('<span style="color:#b00">{}</span>', "failed")
        return format_html('<progress value="{}" max="100" title="{}%"></progress>',
                           round(obj.progress), round(obj.progress))

    @admin.display(description="clipped")
    def clipped_values(self, obj: Clip) -> int:
        return (obj.clipped or {}).get("n_values", 0)

    @admin.display(description="error")
    def short_error(self, obj: Clip) -> str:
        return (obj.error[:80] + "…") if len(obj.error) > 80 else obj.error

    @admin.display(description="preview")
    def preview(self, obj: Clip) -> str:
        if obj.status != ClipStatus.SUCCEEDED:
            return "—"
        try:
            video, poster = clip_url(obj, part="video"), clip_url(obj, part="poster")
        except NoReverseMatch:  # rendering.urls not included in the project's urls
            return "(clip URLs are not configured)"
        return format_html(
            '<video src="{}" poster="{}" controls preload="none" width="256"></video>',
            video, poster)

    @admin.action(description="Queue the selected failed clips again")
    def retry_failed(self, request, queryset) -> None:
        n = sum(clip_retry(clip_id=pk) for pk in queryset.values_list("pk", flat=True))
        self.message_user(request, f"{n} clip(s) queued again", messages.SUCCESS)
