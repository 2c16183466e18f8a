import pytest
from django.core.management import CommandError, call_command

from annotation.models import Campaign, Invite


def test_create_campaign_then_start_when_rendered(corpus, capsys):
    split = corpus.episodes.first().split
    args = ["create_campaign", "--slug", "cli", "--dataset", corpus.name, "--split", split,
            "--source", "ground_truth", "--source", "baseline:jitter", "--no-progress"]
    with pytest.raises(CommandError, match="not rendered"):
        call_command(*args, "--start")
    assert Campaign.objects.get(slug="cli").status == "draft"
    from tests.annotation.conftest import fake_render

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
