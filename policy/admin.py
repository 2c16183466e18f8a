from django import forms
from django.conf import settings
from django.contrib import admin
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from policy.models import Dataset, DatasetImport, Episode
from policy.selectors import episode_plot_svgs
from policy.services.imports import dataset_import_request


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin):
    list_display = ("name", "face_model", "source_format", "episode_count", "created_at")
    readonly_fields = ("face_model", "source_format", "created_at", "created_by")
    search_fields = ("name",)

    def get_queryset(self, request: HttpRequest):
        from django.db.models import Count

        return super().get_queryset(request).annotate(_episodes=Count("episodes"))

    @admin.display(ordering="_episodes", description="episodes")
    def episode_count(self, obj: Dataset) -> int:
        return obj._episodes

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # datasets come from imports


@admin.register(Episode)
class EpisodeAdmin(admin.ModelAdmin):
    list_display = ("key", "dataset", "split", "n_frames", "fps", "has_speaker", "has_audio")
    list_filter = ("dataset", "split")
    search_fields = ("key",)
    list_select_related = ("dataset",)
    readonly_fields = [f.name for f in Episode._meta.fields] + ["plots", "transcript_text"]
    exclude = ("transcript",)

    @admin.display(boolean=True)
    def has_speaker(self, obj: Episode) -> bool:
        return bool(obj.speaker_sha)

    @admin.display(boolean=True)
    def has_audio(self, obj: Episode) -> bool:
        return bool(obj.audio_sha or obj.audio_features_sha)

    @admin.display(description="curves")
    def plots(self, obj: Episode) -> str:
        # The SVG is built from numbers and escaped text only (policy.plots).
        return mark_safe("<br>".join(episode_plot_svgs(obj)))  # noqa: S308

    @admin.display(description="transcript")
    def transcript_text(self, obj: Episode) -> str:
        if not obj.transcript:
            return "—"
        return format_html_join(
            " ",
            '<span title="{:.2f}–{:.2f} s">{}</span>',
            ((w["start"], w["end"], w["word"]) for w in obj.transcript),
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Episode | None = None) -> bool:
        return False


class DatasetImportForm(forms.ModelForm):
    class Meta:
        model = DatasetImport
        fields = ("upload", "format", "dataset_name")
        help_texts = {
            "upload": "a .zip of a corpus folder (docs/corpus_format.md, or the L2L layout)",
            "dataset_name": "leave empty to use the name in the manifest",
        }

    def clean_upload(self):
        upload = self.cleaned_data["upload"]
        limit = settings.IMPORT_MAX_TOTAL_BYTES
        if upload.size > limit:
            raise forms.ValidationError(f"{upload.size} bytes is over the limit of {limit} bytes")
        if not upload.name.lower().endswith(".zip"):
            raise forms.ValidationError("upload a .zip archive")
        return upload


@admin.register(DatasetImport)
class DatasetImportAdmin(admin.ModelAdmin):
    form = DatasetImportForm
    list_display = ("id", "format", "status", "progress_bar", "dataset", "created_at")
    list_filter = ("status", "format")
    readonly_fields = (
        "status",
        "progress_bar",
        "error",
        "dataset",
        "episodes_created",
        "episodes_existing",
        "created_by",
        "created_at",
        "started_at",
        "finished_at",
    )

    @admin.display(description="progress")
    def progress_bar(self, obj: DatasetImport) -> str:
        return format_html(
            '<progress max="100" value="{}"></progress> {}%', obj.progress, round(obj.progress)
        )

    def get_fields(self, request: HttpRequest, obj: DatasetImport | None = None):
        if obj is None:
            return ("upload", "format", "dataset_name")
        return ("upload", "format", "dataset_name", *self.readonly_fields)

    def get_readonly_fields(self, request: HttpRequest, obj: DatasetImport | None = None):
        if obj is None:
            return ()
        return ("upload", "format", "dataset_name", *self.readonly_fields)

    # Imports write to every table and media storage: superusers only.
    def has_module_permission(self, request: HttpRequest) -> bool:
        return request.user.is_active and request.user.is_superuser

    def has_view_permission(self, request: HttpRequest, obj: DatasetImport | None = None) -> bool:
        return request.user.is_active and request.user.is_superuser

    def has_add_permission(self, request: HttpRequest) -> bool:
        return request.user.is_active and request.user.is_superuser

    def has_change_permission(self, request: HttpRequest, obj: DatasetImport | None = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: DatasetImport, form, change: bool) -> None:
        if change:
            return
        job = dataset_import_request(
            upload=form.cleaned_data["upload"],
            fmt=form.cleaned_data["format"],
            dataset_name=form.cleaned_data["dataset_name"],
            user=request.user,
        )
        obj.pk = job.pk
        obj.refresh_from_db()
