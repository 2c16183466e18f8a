from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.db import models, transaction
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils.html import format_html

from annotation.models import (
    Assignment,
    Campaign,
    CampaignStatus,
    Enrollment,
    Invite,
    Item,
    Judgment,
)
from annotation.parsers import MAX_DEPTH, BoundedJSONDecoder
from annotation.selectors import campaign_list_for, campaign_summary, campaigns_with_counts
from annotation.services.campaign_settings import SETTINGS, field_fixed_reason
from annotation.services.campaigns import (
    CampaignError,
    campaign_delete,
    campaign_delete_check,
    campaign_set_status,
    campaign_update,
    campaign_update_check,
)


class InviteInline(admin.TabularInline):
    model = Invite
    extra = 0
    fields = ("label", "token", "max_uses", "uses", "expires_at", "active")
    readonly_fields = ("token", "uses")


# Django's form JSONField decodes with the standard decoder, which a deeply nested text sends
# into a RecursionError (a server error); this one refuses it as invalid JSON.
_BOUNDED_JSON = {"decoder": BoundedJSONDecoder, "error_messages": {
    "invalid": f"Enter valid JSON (nested at most {MAX_DEPTH} levels)."}}


def _form_fields(db_field, **kwargs):
    """As ``CampaignAdmin.formfield_overrides``, for the form's own class (a bare URL is https,
    JSON is bounded in depth)."""
    if isinstance(db_field, models.URLField):
        kwargs.setdefault("assume_scheme", "https")
    if isinstance(db_field, models.JSONField):
        kwargs = {**_BOUNDED_JSON, **kwargs}
    return db_field.formfield(**kwargs)


class CampaignAdminForm(forms.ModelForm):
    """Checks the changed settings with the service's rules (``campaign_update_check``), so a
    refusal is shown by its field; ``CampaignAdmin.save_model`` writes them through
    ``campaign_update``, which checks again under the row lock."""

    class Meta:
        model = Campaign
        fields = SETTINGS  # less what CampaignAdmin.get_readonly_fields holds fixed now
        formfield_callback = _form_fields

    def clean(self) -> dict:
        cleaned = super().clean()
        if self.instance.pk is None or self.errors:
            return cleaned
        try:
            # self.instance still holds the stored values: the form's are copied onto it after
            # clean().
            campaign_update_check(campaign=self.instance, fields=_changes(self))
        except CampaignError as exc:
            self.add_error(exc.field if exc.field in self.fields else None, str(exc))
        return cleaned


def _changes(form: forms.ModelForm) -> dict[str, object]:
    return {f: form.cleaned_data[f] for f in form.changed_data
            if f in SETTINGS and f in form.cleaned_data}


@admin.register(Campaign)
class CampaignAdmin(admin.ModelAdmin):
    """Every write goes through the campaign services: edits through ``campaign_update``, status
    through the list's actions (``campaign_set_status``), deletion through
    ``campaign_delete``. A setting that cannot change now is shown read-only."""

    form = CampaignAdminForm
    formfield_overrides = {models.URLField: {"assume_scheme": "https"},
                           models.JSONField: _BOUNDED_JSON}
    list_display = ("name", "slug", "status", "protocol", "dataset", "overlap", "progress")
    list_filter = ("status", "protocol")
    search_fields = ("name", "slug")
    readonly_fields = ("slug", "dataset", "status", "created_by", "ratings", "prioritised_upto",
                       "page")
    filter_horizontal = ("researchers",)
    inlines = [InviteInline]
    actions = ("start", "pause", "close")

    def get_queryset(self, request):
        # Staff researchers see their own campaigns here too, not everyone's.
        return campaigns_with_counts(campaign_list_for(request.user))

    def has_add_permission(self, request) -> bool:
        return False  # campaigns are made by the campaign page / API, which build their items

    def get_readonly_fields(self, request, obj=None) -> list[str]:
        fixed = list(self.readonly_fields)
        if obj is not None:
            has_items = obj.items.exists()
            fixed += [f for f in SETTINGS if f not in fixed
                      and field_fixed_reason(f, status=obj.status, has_items=has_items)]
        return fixed

    def get_actions(self, request):
        # Django's bulk delete would report every campaign deleted, refused or not; campaigns
        # are deleted one at a time, from their page, where a refusal is said.
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    # -- edits

    def save_model(self, request, obj, form, change) -> None:
        try:
            campaign_update(campaign=obj, **_changes(form))
        except CampaignError as exc:
            # The campaign changed since the form was checked (a status change in between):
            # campaign_update wrote nothing, and nothing else of this request is saved.
            request._campaign_refused = str(exc)

    def save_related(self, request, form, formsets, change) -> None:
        if getattr(request, "_campaign_refused", None):
            for formset in formsets:  # saved nothing (the admin's change message reads these)
                formset.new_objects, formset.changed_objects, formset.deleted_objects = [], [], []
            return
        # The researchers were set by campaign_update; the invites are the inline's own rows.
        for formset in formsets:
            self.save_formset(request, form, formset, change=change)

    def log_change(self, request, obj, message):
        if getattr(request, "_campaign_refused", None):
            return None
        return super().log_change(request, obj, message)

    def response_change(self, request, obj) -> HttpResponse:
        refused = getattr(request, "_campaign_refused", None)
        if refused:
            self.message_user(request, f"Nothing was changed: {refused}", messages.ERROR)
            return HttpResponseRedirect(request.path)
        return super().response_change(request, obj)

    # -- status

    def _set_status(self, request, queryset, status: str, done: str) -> None:
        changed = 0
        for campaign in queryset:
            try:
                campaign_set_status(campaign=campaign, status=status)
                changed += 1
            except CampaignError as exc:
                self.message_user(request, f"{campaign.slug}: {exc}", messages.ERROR)
        if changed:
            self.message_user(request, f"{changed} campaign(s) {done}.", messages.SUCCESS)

    @admin.action(description="Start (or resume) serving raters")
    def start(self, request, queryset) -> None:
        self._set_status(request, queryset, CampaignStatus.ACTIVE, "serving raters")

    @admin.action(description="Pause")
    def pause(self, request, queryset) -> None:
        self._set_status(request, queryset, CampaignStatus.PAUSED, "paused")

    @admin.action(description="Close for good")
    def close(self, request, queryset) -> None:
        self._set_status(request, queryset, CampaignStatus.CLOSED, "closed")

    # -- deletion

    def delete_view(self, request: HttpRequest, object_id, extra_context=None) -> HttpResponse:
        campaign = self.get_object(request, unquote(object_id))
        if campaign is not None:
            try:
                campaign_delete_check(campaign=campaign)
            except CampaignError as exc:
                self.message_user(request, f"Cannot delete {campaign.slug}: {exc}",
                                  messages.ERROR)
                return HttpResponseRedirect(
                    reverse("admin:annotation_campaign_change", args=[campaign.pk]))
        return super().delete_view(request, object_id, extra_context)

    def get_deleted_objects(self, objs, request):
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        # Items, leases and enrolments go with their campaign; that their own admin pages are
        # read-only is no reason to keep them (campaign_delete decides).
        return deleted, counts, set(), protected

    def delete_model(self, request, obj) -> None:
        try:
            campaign_delete(campaign=obj)
        except CampaignError as exc:  # changed since the confirmation page was shown
            # The admin logged the deletion before asking for it: undo that too. No query runs
            # after this in the request's transaction (response_delete only redirects).
            transaction.set_rollback(True)
            request._campaign_refused = str(exc)

    def response_delete(self, request, obj_display, obj_id) -> HttpResponse:
        refused = getattr(request, "_campaign_refused", None)
        if refused:
            self.message_user(request, f"Cannot delete {obj_display}: {refused}",
                              messages.ERROR)
            return HttpResponseRedirect(
                reverse("admin:annotation_campaign_change", args=[obj_id]))
        return super().response_delete(request, obj_display, obj_id)

    @admin.display(description="progress")
    def progress(self, obj: Campaign) -> str:
        p = campaign_summary(obj)
        return f"{p['judgments']} / {p['judgments_needed']} ({p['percent']} %)"

    @admin.display(description="campaign page")
    def page(self, obj: Campaign) -> str:
        return format_html('<a href="{}">progress, raters and invite links</a>',
                           reverse("annotation:campaign", args=[obj.slug]))


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows only the services write: shown, never added, changed or deleted here (the feedback
    app's admin uses it too)."""

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Item)
class ItemAdmin(ReadOnlyAdmin):
    list_display = ("id", "campaign", "episode", "probe", "size", "n_judgments", "priority")
    list_filter = ("probe", "campaign")


@admin.register(Assignment)
class AssignmentAdmin(ReadOnlyAdmin):
    list_display = ("token", "campaign", "item", "rater", "probe", "status", "expires_at")
    list_filter = ("status", "probe", "campaign")


@admin.register(Judgment)
class JudgmentAdmin(ReadOnlyAdmin):
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
