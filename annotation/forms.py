from django import forms

from annotation.models import Protocol
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
    sources = forms.MultipleChoiceField(widget=forms.CheckboxSelectMultiple,
                                        help_text="candidates to compare")
    samples = forms.IntegerField(min_value=1, max_value=8, initial=1,
                                 help_text="samples per policy version and episode")
    protocol = forms.ChoiceField(choices=Protocol.choices)
    group_size = forms.IntegerField(min_value=2, max_value=8, initial=5)
    overlap = forms.IntegerField(min_value=1, max_value=50, initial=3,
                                 help_text="judgments per item")
    target_items = forms.IntegerField(min_value=1, initial=100)
    per_rater_limit = forms.IntegerField(min_value=1, initial=50)
    gold_rate = forms.FloatField(min_value=0, max_value=0.5, initial=0.1)
    catch_rate = forms.FloatField(min_value=0, max_value=0.5, initial=0.05)
    repeat_rate = forms.FloatField(min_value=0, max_value=0.5, initial=0.05)
    instructions = forms.CharField(widget=forms.Textarea(attrs={"rows": 4}), required=False)
    consent_text = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False)
    crowd_param = forms.RegexField(r"^[A-Za-z0-9_]{0,40}$", required=False,
                                   help_text="e.g. PROLIFIC_PID for crowd entry")
    completion_url = forms.URLField(required=False, assume_scheme="https")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["sources"].choices = source_choices()

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
