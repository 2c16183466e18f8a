import pytest
from django.core.management import CommandError, call_command

from annotation.models import Campaign, Invite
from tests.annotation.conftest import SOURCES, fake_render, make_campaign


def test_create_campaign_then_start_when_rendered(corpus, capsys):
    split = corpus.episodes.first().split
    args = ["create_campaign", "--slug", "cli", "--dataset", corpus.name, "--split", split,
            "--source", "ground_truth", "--source", "baseline:jitter", "--no-progress"]
    with pytest.raises(CommandError, match="not rendered"):
        call_command(*args, "--start")
    assert Campaign.objects.get(slug="cli").status == "draft"
    fake_render(Campaign.objects.get(slug="cli"))
    call_command(*args, "--if-missing", "--start", "--invite")
    out = capsys.readouterr().out
    assert "campaign cli is active" in out and "/rate/invite/" in out
    assert Invite.objects.filter(campaign__slug="cli").count() == 1
    with pytest.raises(CommandError, match="exists already"):
        call_command(*args)


@pytest.mark.parametrize("source, message", [
    ("policy:", "no policy version"), ("alien", "expected policy"), ("policy:x:many", "samples"),
])
def test_create_campaign_bad_source(corpus, source, message):
    with pytest.raises(CommandError, match=message):
        call_command("create_campaign", "--slug", "x", "--dataset", corpus.name,
                     "--source", source)
    assert not Campaign.objects.exists()


def test_change_campaign_sets_settings_and_status_through_the_services(corpus, capsys):
    from annotation.services.campaigns import campaign_create

    # given a draft whose clips are not rendered
    campaign = campaign_create(name="s", slug="s", dataset=corpus, sources=SOURCES,
                               episodes=list(corpus.episodes.all())).campaign
    # when settings are changed
    call_command("change_campaign", "s", "--set", "per_rater_limit=40",
                 "--set", 'reason_tags=["timing", "too still"]', "--set", "name=Pilot 2")
    # then
    campaign.refresh_from_db()
    assert (campaign.per_rater_limit, campaign.reason_tags, campaign.name) == (
        40, ["timing", "too still"], "Pilot 2")
    assert "campaign s is draft; changed" in capsys.readouterr().out
    # a refused setting, or a refused status, keeps nothing of the call
    for args, message in [
        (["--set", "instructions=Hi", "--set", "gold_rate=0.9"], "gold_rate: must be"),
        (["--set", "overlap=5"], "overlap: the campaign's items are built from it"),
        (["--set", "status=active"], "status: changes through the status actions"),
        (["--set", "instructions=Hi", "--status", "active"], "clips are not rendered yet"),
        (["--set", "instructions"], "expected FIELD=VALUE"),
    ]:
        with pytest.raises(CommandError, match=message):
            call_command("change_campaign", "s", *args)
    campaign.refresh_from_db()
    assert (campaign.instructions, campaign.status) == ("", "draft")
    fake_render(campaign)
    call_command("change_campaign", "s", "--status", "active")
    assert Campaign.objects.get(slug="s").status == "active"


def test_change_campaign_deletes_only_what_may_go(corpus):
    campaign = make_campaign(corpus, slug="s")
    with pytest.raises(CommandError, match="serving raters; pause or close it"):
        call_command("change_campaign", "s", "--delete")
    call_command("change_campaign", "s", "--status", "paused")
    call_command("change_campaign", "s", "--delete")
    assert not Campaign.objects.filter(pk=campaign.pk).exists()
    with pytest.raises(CommandError, match="no campaign 's'"):
        call_command("change_campaign", "s", "--delete")


@pytest.mark.parametrize("text", ["[" * 100_000, "[" * 100 + "]" * 100])
def test_change_campaign_refuses_deeply_nested_json(corpus, text):
    campaign = make_campaign(corpus, start=False)
    with pytest.raises(CommandError, match="reason_tags: the JSON is too deeply nested"):
        call_command("change_campaign", campaign.slug, "--set", f"reason_tags={text}",
                     "--set", "instructions=Hi")
    campaign.refresh_from_db()
    assert (campaign.reason_tags, campaign.instructions) == ([], "")
