"""Researchers' snapshot pages: the list (with progress while one is made), a form to ask for
one from the campaigns the user may see, and one snapshot with its card and downloads."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseForbidden
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from annotation.roles import is_researcher
from annotation.selectors import campaign_list_for
from feedback.services.snapshots import (
    DEFAULT_TEST_FRACTION,
    SnapshotError,
    snapshot_folder,
    snapshot_get_for,
    snapshot_list_for,
    snapshot_request,
    source_labels,
)
from policy.models import JobStatus


class SnapshotForm(forms.Form):
    campaigns = forms.MultipleChoiceField(widget=forms.CheckboxSelectMultiple)
    qc = forms.ChoiceField(label="raters", choices=[
        ("trusted", "trusted raters only"),
        ("all", "every rater (a status column tells them apart)")])
    since = forms.DateTimeField(required=False, help_text="judged at or after (UTC)")
    until = forms.DateTimeField(required=False, help_text="judged before (UTC)")
    sources = forms.MultipleChoiceField(required=False, widget=forms.CheckboxSelectMultiple,
                                        help_text="none ticked: every source")
    test_fraction = forms.FloatField(initial=DEFAULT_TEST_FRACTION, min_value=0.0,
                                     max_value=0.99, help_text="share of episodes in test")
    name = forms.CharField(required=False, max_length=200)

    def __init__(self, *args, campaigns: list, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["campaigns"].choices = [(c.slug, f"{c.name} ({c.slug}, {c.protocol})")
                                            for c in campaigns]
        labels = sorted({label for c in campaigns for label in source_labels(c)})
        self.fields["sources"].choices = [(label, label) for label in labels]

    def filters(self) -> dict:
        data = dict(self.cleaned_data)
        data.pop("name")
        if data.get("test_fraction") is None:
            data["test_fraction"] = DEFAULT_TEST_FRACTION
        return data


def _researcher(request: HttpRequest) -> HttpResponse | None:
    if not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    if not is_researcher(request.user):
        return HttpResponseForbidden("researchers only")
    return None


def _row(s) -> dict:
    return {"s": s, "running": s.status in (JobStatus.QUEUED, JobStatus.RUNNING),
            "ready": snapshot_folder(s) is not None,
            "pairs": sum((s.counts or {}).get("pairs", {}).values()),
            "judgments": sum((s.counts or {}).get("judgments", {}).values())}


@require_http_methods(["GET", "POST"])
def snapshot_list(request: HttpRequest) -> HttpResponse:
    if (denied := _researcher(request)) is not None:
        return denied
    campaigns = list(campaign_list_for(request.user))
    form = SnapshotForm(request.POST or None, campaigns=campaigns)
    if request.method == "POST" and form.is_valid():
        try:
            s = snapshot_request(filters=form.filters(), user=request.user,
                                 name=form.cleaned_data["name"])
        except SnapshotError as exc:
            form.add_error(exc.field if exc.field in form.fields else None, str(exc))
        else:
            messages.success(request, f"Snapshot #{s.pk} is being made.")
            return redirect("feedback:snapshot", snapshot_id=s.pk)
    rows = [_row(s) for s in snapshot_list_for(request.user)]
    return render(request, "feedback/snapshot_list.html", {
        "rows": rows, "form": form, "refresh": any(r["running"] for r in rows)})


def snapshot_detail(request: HttpRequest, snapshot_id: int) -> HttpResponse:
    if (denied := _researcher(request)) is not None:
        return denied
    s = snapshot_get_for(request.user, snapshot_id)
    if s is None:
        raise Http404("no such snapshot")
    row = _row(s)
    folder = snapshot_folder(s)
    card = (folder / "README.md").read_text(encoding="utf-8") if folder else ""
    return render(request, "feedback/snapshot_detail.html", {
        **row, "card": card, "refresh": row["running"],
        "counts": [(c, split, n) for c, splits in (s.counts or {}).items()
                   if isinstance(splits, dict) for split, n in splits.items()]})
