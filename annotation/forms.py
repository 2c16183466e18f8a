from django import forms

from annotation.models import CRITERIA, Campaign, Protocol
from annotation.services.campaign_settings import INT_MAX, SMALL_INT_MAX, field_fixed_reason
from policy.models import Candidate, CandidateSource, Dataset, PolicyVersion


def source_choices() -> list[tuple[str, str]]:
    out = [(f"policy:{v.name}", f"policy {v.name} ({v.dataset.name})")
           for v in PolicyVersion.objects.select_related("dataset").order_by("-created_at")]
    out.append(("ground_truth", "ground truth"))
    names = (Candidate.objects.filter(source=CandidateSource.BASELINE)
             .exclude(baseline__startswith="wrong-").values_list("baseline", flat=True)
             .distinct())
    out += [(f"baseline:{n}", f"baseline {n}") for n in sorted(set(names))]
    return out


class CampaignForm(forms.Form):
    name = forms.CharField(max_length=200)
    slug = forms.SlugField(max_length=100, help_text="short name used in links")
    dataset = forms.ModelChoiceField(Dataset.objects.order_by("name"), to_field_name="name")
    split = forms.ChoiceField(choices=[("test", "test"), ("val", "val"), ("train", "train")])
    sources = forms.MultipleChoiceField(
        widget=forms.CheckboxSelectMultiple,
        help_text="candidates to compare; a policy version's missing candidates are sampled "
                  "first (on the gpu workers), and the items are built when they are")
    samples = forms.IntegerField(min_value=1, max_value=8, initial=1,
                                 help_text="samples per policy version and episode")
    protocol = forms.ChoiceField(choices=Protocol.choices)
    group_size = forms.IntegerField(min_value=2, max_value=8, initial=5)
    overlap = forms.IntegerField(min_value=1, max_value=50, initial=3,
                                 help_text="judgments per item")
    target_items = forms.IntegerField(min_value=1, max_value=100_000, initial=100)
    per_rater_limit = forms.IntegerField(min_value=1, max_value=INT_MAX, initial=50)
    gold_rate = forms.FloatField(min_value=0, max_value=0.5, initial=0.1)
    catch_rate = forms.FloatField(min_value=0, max_value=0.5, initial=0.05)
    repeat_rate = forms.FloatField(min_value=0, max_value=0.5, initial=0.05)
    instructions = forms.CharField(widget=forms.Textarea(attrs={"rows": 4}), required=False)
    consent_text = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False)
    crowd_param = forms.RegexField(r"^[A-Za-z0-9_]{0,40}$", required=False,
                                   help_text="e.g. PROLIFIC_PID for crowd entry")
    completion_url = forms.URLField(required=False, assume_scheme="https")

    def __init__(self, *args, version: str = "", **kwargs) -> None:
        """``version``: a policy version's name, whose source is ticked and whose dataset is
        chosen (a link "new campaign from this version": ``/campaigns/new/?version=<name>``)."""
        super().__init__(*args, **kwargs)
        self.fields["sources"].choices = source_choices()
        chosen = PolicyVersion.objects.select_related("dataset").filter(name=version).first() \
            if version else None
        if chosen is not None:
            self.initial.setdefault("sources", [f"policy:{chosen.name}"])
            self.initial.setdefault("dataset", chosen.dataset)

    def campaign_kwargs(self) -> dict:
        data = dict(self.cleaned_data)
        samples = data.pop("samples")
        sources = []
        for value in data.pop("sources"):
            kind, _, name = value.partition(":")
            if kind == "policy":
                sources.append({"kind": "policy", "version": name, "samples": samples})
            elif kind == "baseline":
                sources.append({"kind": "baseline", "name": name})
            else:
                sources.append({"kind": "ground_truth"})
        data["sources"] = sources
        return data


class CampaignSettingsForm(forms.Form):
    """A made campaign's settings on its page. Shapes only: ``campaign_update`` decides what may
    change and to what. A setting that cannot change now is shown disabled, with the reason."""

    name = forms.CharField(max_length=200)
    instructions = forms.CharField(widget=forms.Textarea(attrs={"rows": 4}), required=False)
    consent_text = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False)
    # Bounds here are the columns' (what fits); the product's rules are ``campaign_update``'s.
    per_rater_limit = forms.IntegerField(max_value=INT_MAX,
                                         help_text="items one rater answers at most")
    # As the API: the rate page renews a lease every lease/4 s (at least every 5 s).
    lease_seconds = forms.IntegerField(min_value=15, max_value=3600)
    active_order = forms.BooleanField(required=False,
                                      help_text="serve first the items least certain")
    gold_rate = forms.FloatField()
    catch_rate = forms.FloatField()
    repeat_rate = forms.FloatField()
    warn_after = forms.IntegerField(max_value=SMALL_INT_MAX,
                                    help_text="failed probes before a rater is warned")
    block_after = forms.IntegerField(max_value=SMALL_INT_MAX,
                                     help_text="failed probes before a rater is blocked")
    ask_strength = forms.BooleanField(required=False, help_text="pairwise: 3 levels of strength")
    reason_tags = forms.CharField(required=False, help_text="comma-separated")
    crowd_param = forms.CharField(required=False, max_length=40,
                                  help_text="e.g. PROLIFIC_PID for crowd entry")
    completion_code = forms.CharField(required=False, max_length=40)
    completion_url = forms.URLField(required=False, assume_scheme="https")

    def __init__(self, *args, campaign: Campaign, **kwargs) -> None:
        initial = {name: getattr(campaign, name) for name in self.base_fields}
        initial["reason_tags"] = ", ".join(campaign.reason_tags or [])
        super().__init__(*args, initial=initial, **kwargs)
        if campaign.protocol == Protocol.GROUP:
            del self.fields["ask_strength"]
            weights = campaign.weights
            for c in CRITERIA:
                self.fields[f"weight_{c}"] = forms.FloatField(
                    label=f"weight of {c}", initial=weights[c],
                    help_text="group scoring: how much this criterion counts")
        has_items = campaign.items.exists()
        for name, field in self.fields.items():
            reason = field_fixed_reason(self.setting(name), status=campaign.status,
                                        has_items=has_items)
            if reason:
                field.disabled = True
                field.help_text = reason

    @staticmethod
    def setting(name: str) -> str:
        """The campaign setting a form field edits."""
        return "criteria_weights" if name.startswith("weight_") else name

    def field_for(self, setting: str) -> str | None:
        """The form field to show a refusal of ``setting`` by (None: above the form)."""
        if setting == "criteria_weights":
            return next((f for f in self.fields if f.startswith("weight_")), None)
        return setting if setting in self.fields else None

    def changes(self) -> dict[str, object]:
        """The settings this form changes, as ``campaign_update`` takes them."""
        out: dict[str, object] = {}
        for name in self.changed_data:
            if self.fields[name].disabled:
                continue
            if name.startswith("weight_"):
                out["criteria_weights"] = {
                    c: self.cleaned_data[f"weight_{c}"] for c in CRITERIA}
            elif name == "reason_tags":
                out[name] = [t.strip() for t in self.cleaned_data[name].split(",") if t.strip()]
            else:
                out[name] = self.cleaned_data[name]
        return out
