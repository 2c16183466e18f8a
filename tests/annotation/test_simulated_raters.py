import uuid
from types import SimpleNamespace

import pytest
from django.core.management import CommandError, call_command

from annotation import simulation
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


def test_a_second_run_on_the_same_campaign_stores_its_answers(corpus, capsys):
    # given: a campaign that careful raters have already answered in part, with the same seed
    campaign = make_campaign(corpus, overlap=3)
    call_command("simulate_raters", "--campaign", campaign.slug, "--raters", "3",
                 "--kind", "careful", "--items", "4", "--no-progress")
    assert "3 careful raters stored 12 judgments (0 refused)" in capsys.readouterr().out
    # when: raters of other kinds follow, with the same (default) seed
    call_command("simulate_raters", "--campaign", campaign.slug, "--raters", "2",
                 "--kind", "left-biased", "--items", "4", "--no-progress")
    call_command("simulate_raters", "--campaign", campaign.slug, "--raters", "1",
                 "--kind", "random", "--items", "4", "--no-progress")
    # then: every run stored all it answered
    out = capsys.readouterr().out
    assert "2 left-biased raters stored 8 judgments (0 refused)" in out
    assert "1 random raters stored 4 judgments (0 refused)" in out
    stored = Judgment.objects.filter(campaign=campaign)
    assert {kind: stored.filter(playback__simulated=kind).count()
            for kind in ("careful", "left-biased", "random")} == {
        "careful": 12, "left-biased": 8, "random": 4}


def test_refused_answers_are_reported_by_code(corpus, capsys, monkeypatch):
    # given: raters that (wrongly) send one idempotency key with every answer
    campaign = make_campaign(corpus)
    key = uuid.uuid4()
    monkeypatch.setattr(simulation, "uuid", SimpleNamespace(uuid4=lambda: key))
    # when
    call_command("simulate_raters", "--campaign", campaign.slug, "--raters", "1",
                 "--items", "3", "--no-progress")
    # then: the first answer is stored, the two after it are refused and the reason is shown
    out = capsys.readouterr().out
    assert "1 careful raters stored 1 judgments (2 refused)" in out
    assert "refused 2: key_reused (idempotency_key: already used for another item)" in out
    assert Judgment.objects.filter(campaign=campaign).count() == 1
