import numpy as np
from django import forms
from django.conf import settings
from django.contrib import admin
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from policy.models import (
    Candidate,
    CandidateJob,
    Dataset,
    DatasetImport,
    Episode,
    PolicyVersion,
    TrainingRun,
)
from policy.plots import line_plot_svg
from policy.selectors import episode_plot_svgs
from policy.services.imports import dataset_import_request
from policy.services.training import policy_version_promote, policy_version_retire


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
    readonly_fields = [f.name for f in Episode._meta.fields if f.name != "transcript"] + [
        "plots",
        "transcript_text",
    ]
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


@admin.register(PolicyVersion)
class PolicyVersionAdmin(admin.ModelAdmin):
    list_display = ("name", "lineage", "status", "dataset", "parent", "short_sha", "created_at")
    list_filter = ("status", "lineage", "dataset")
    readonly_fields = [f.name for f in PolicyVersion._meta.fields if f.name != "metrics"] + [
        "metrics_table"
    ]
    exclude = ("metrics",)
    actions = ("promote", "retire")

    @admin.display(description="checkpoint")
    def short_sha(self, obj: PolicyVersion) -> str:
        return obj.checkpoint_sha[:12]

    @admin.display(description="metrics (test split)")
    def metrics_table(self, obj: PolicyVersion) -> str:
        sources = (obj.metrics or {}).get("sources", {})
        if not sources:
            return "—"
        names = sorted({k for m in sources.values() for k in m})
        head = format_html_join("", "<th>{}</th>", ((n,) for n in names))
        rows = format_html_join(
            "",
            "<tr><th>{}</th>{}</tr>",
            (
                (
                    source,
                    format_html_join(
                        "",
                        "<td>{}</td>",
                        (
                            (f"{m[n]:.4f}" if isinstance(m.get(n), int | float) else "—",)
                            for n in names
                        ),
                    ),
                )
                for source, m in sources.items()
            ),
        )
        return format_html("<table><tr><th></th>{}</tr>{}</table>", head, rows)

    @admin.action(description="Promote (retires the lineage's current version)")
    def promote(self, request: HttpRequest, queryset) -> None:
        for version in queryset:
            policy_version_promote(version=version)
        self.message_user(request, f"promoted {queryset.count()} version(s)")

    @admin.action(description="Retire")
    def retire(self, request: HttpRequest, queryset) -> None:
        for version in queryset:
            policy_version_retire(version=version)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # versions come from training runs

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(TrainingRun)
class TrainingRunAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "kind",
        "dataset",
        "status",
        "progress_bar",
        "output_version",
        "created_at",
    )
    list_filter = ("status", "kind")
    readonly_fields = [
        f.name for f in TrainingRun._meta.fields if f.name not in ("loss_curve", "progress")
    ] + ["progress_bar", "loss_plot"]
    exclude = ("loss_curve", "progress")

    @admin.display(description="progress")
    def progress_bar(self, obj: TrainingRun) -> str:
        return format_html(
            '<progress max="100" value="{}"></progress> {}%', obj.progress, round(obj.progress)
        )

    @admin.display(description="training loss")
    def loss_plot(self, obj: TrainingRun) -> str:
        curve = [p for p in obj.loss_curve or [] if p[1] is not None]
        if not curve:
            return "—"
        steps = np.array([p[0] for p in curve], dtype=float)
        losses = np.array([p[1] for p in curve], dtype=float)
        # Plotted against the logging index; the axis label gives the step range.
        return mark_safe(  # noqa: S308 - built from numbers and escaped text (policy.plots)
            line_plot_svg(
                {"loss": losses},
                fps=1.0,
                width=640,
                height=220,
                title=f"loss, steps {int(steps[0])}–{int(steps[-1])}",
                x_end_label=f"step {int(steps[-1])}",
            )
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(CandidateJob)
class CandidateJobAdmin(admin.ModelAdmin):
    """Read-only: jobs come from ``generate_candidates`` and the retraining round."""

    list_display = (
        "id",
        "version",
        "episodes",
        "k",
        "temperature",
        "top_p",
        "status",
        "progress_bar",
        "candidates_created",
        "created_at",
    )
    list_filter = ("status", "version")
    list_select_related = ("version",)
    readonly_fields = [f.name for f in CandidateJob._meta.fields if f.name != "progress"] + [
        "progress_bar"
    ]
    exclude = ("progress",)

    @admin.display(description="episodes")
    def episodes(self, obj: CandidateJob) -> str:
        if obj.split:
            return obj.split + (f" (first {obj.limit})" if obj.limit else "")
        return f"{len(obj.episode_ids)} chosen"

    @admin.display(description="progress")
    def progress_bar(self, obj: CandidateJob) -> str:
        return format_html(
            '<progress max="100" value="{}"></progress> {}%', obj.progress, round(obj.progress)
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(Candidate)
class CandidateAdmin(admin.ModelAdmin):
    list_display = (
        "episode",
        "source",
        "policy_version",
        "baseline",
        "seed",
        "temperature",
        "n_frames",
    )
    list_filter = ("source", "policy_version")
    list_select_related = ("episode", "episode__dataset", "policy_version")
    readonly_fields = [f.name for f in Candidate._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False
