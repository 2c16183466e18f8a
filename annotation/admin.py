from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html

from annotation.models import Assignment, Campaign, Enrollment, Invite, Item, Judgment
from annotation.selectors import campaign_list_for, campaign_summary, campaigns_with_counts


class InviteInline(admin.TabularInline):
    model = Invite
    extra = 0
    fields = ("label", "token", "max_uses", "uses", "expires_at", "active")
    readonly_fields = ("token", "uses")


@admin.register(Campaign)
class CampaignAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "status", "protocol", "dataset", "overlap", "progress")
    list_filter = ("status", "protocol")
    search_fields = ("name", "slug")
    readonly_fields = ("slug", "dataset", "sources", "protocol", "group_size", "overlap",
                       "target_items", "created_by", "ratings", "prioritised_upto", "page")
    filter_horizontal = ("researchers",)
    inlines = [InviteInline]

    def get_queryset(self, request):
        # Staff researchers see their own campaigns here too, not everyone's.
        return campaigns_with_counts(campaign_list_for(request.user))

    def has_add_permission(self, request) -> bool:
        return False  # campaigns are made by the campaign page / API, which build their items

    @admin.display(description="progress")
    def progress(self, obj: Campaign) -> str:
        p = campaign_summary(obj)
        return f"{p['judgments']} / {p['judgments_needed']} ({p['percent']} %)"

    @admin.display(description="campaign page")
    def page(self, obj: Campaign) -> str:
        return format_html('<a href="{}">progress, raters and invite links</a>',
                           reverse("annotation:campaign", args=[obj.slug]))


class _ReadOnly(admin.ModelAdmin):
    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Item)
class ItemAdmin(_ReadOnly):
    list_display = ("id", "campaign", "episode", "probe", "size", "n_judgments", "priority")
    list_filter = ("probe", "campaign")


@admin.register(Assignment)
class AssignmentAdmin(_ReadOnly):
    list_display = ("token", "campaign", "item", "rater", "probe", "status", "expires_at")
    list_filter = ("status", "probe", "campaign")


@admin.register(Judgment)
class JudgmentAdmin(_ReadOnly):
    """Judgments are append-only: nobody edits or deletes them here."""

    list_display = ("id", "campaign", "item", "rater", "probe", "choice", "outcome",
                    "strength", "decision_ms", "created_at")
    list_filter = ("campaign", "probe", "outcome")


@admin.register(Enrollment)
class EnrollmentAdmin(admin.ModelAdmin):
    list_display = ("pseudonym", "campaign", "rater", "external_id", "n_judgments",
                    "probes_passed", "probes_failed", "blocked", "finished_at")
    list_filter = ("campaign", "blocked")
    readonly_fields = ("pseudonym", "n_judgments", "probes_passed", "probes_failed")
