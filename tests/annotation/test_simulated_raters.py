import pytest
from django.core.management import CommandError, call_command

from annotation.models import Judgment
from annotation.services.ordering import campaign_reprioritise
from tests.annotation.conftest import make_campaign


def test_careful_simulated_raters_prefer_the_ground_truth(corpus, capsys):
    campaign = make_campaign(corpus, overlap=3, gold_rate=0.1)
    call_command("simulate_raters", "--campaign", campaign.slug, "--raters", "4",
                 "--kind", "careful", "--no-progress")
    assert "4 careful raters stored" in capsys.readouterr().out
    assert Judgment.objects.filter(probe="none").count() == 3 * campaign.items.filter(
        probe="none").count()
    campaign_reprioritise(campaign_id=campaign.pk)
    campaign.refresh_from_db()
    r = campaign.ratings
    assert r["ground_truth"] > r["baseline:jitter"]
    assert r["ground_truth"] > r["baseline:mistimed"]
    gold = Judgment.objects.filter(probe="gold")
    assert all(j.qc["passed"] for j in gold)


def test_left_biased_raters_press_left(corpus):
    campaign = make_campaign(corpus, overlap=2)
    call_command("simulate_raters", "--campaign", campaign.slug, "--raters", "2",
                 "--kind", "left-biased", "--no-progress")
    choices = list(Judgment.objects.values_list("choice", flat=True))
    assert choices.count("left") / len(choices) > 0.6


def test_simulate_raters_refuses_a_draft_campaign(corpus):
    campaign = make_campaign(corpus, start=False)
    with pytest.raises(CommandError, match="draft"):
        call_command("simulate_raters", "--campaign", campaign.slug)
