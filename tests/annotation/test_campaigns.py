import pytest

from annotation.models import Campaign, Item, ItemMember, Probe
from annotation.services.campaigns import CampaignError, campaign_create, campaign_set_status
from rendering.models import Clip
from tests.annotation.conftest import SOURCES, fake_render, make_campaign


def test_pairwise_campaign_has_every_pair_and_probes(corpus):
    # given six episodes with three candidates each
    eps = list(corpus.episodes.order_by("key"))
    # when
    build = campaign_create(name="s", slug="s", dataset=corpus, sources=SOURCES, episodes=eps,
                            gold_rate=0.1, catch_rate=0.1)
    # then: three pairs per episode, and gold/catch items for a few episodes
    assert build.items == 3 * len(eps)
    assert build.gold == build.catch == 2
    gold = Item.objects.get(pk=Item.objects.filter(probe=Probe.GOLD).values("pk")[:1])
    slots = list(gold.members.values_list("candidate__source", "candidate__baseline"))
    assert slots == [("ground_truth", ""), ("baseline", "wrong-valence_swap")]
    catch = Item.objects.filter(probe=Probe.CATCH).first()
    a, b = catch.members.all()
    assert a.candidate_id == b.candidate_id
    # one clip per distinct candidate plus a speaker clip per episode, all queued
    assert Clip.objects.count() == ItemMember.objects.values("clip").distinct().count() + len(eps)
    assert build.campaign.status == "draft"


def test_group_campaign_puts_the_pool_in_one_item(corpus):
    build = campaign_create(name="g", slug="g", dataset=corpus, sources=SOURCES,
                            protocol="group", group_size=5, gold_rate=0, catch_rate=0,
                            episodes=list(corpus.episodes.all()))
    assert build.items == corpus.episodes.count()
    assert set(Item.objects.values_list("size", flat=True)) == {3}


@pytest.mark.parametrize("change, field", [
    ({"sources": [{"kind": "policy", "version": "nope"}]}, "no policy version"),
    ({"sources": [{"kind": "alien"}]}, "kind one of"),
    ({"sources": []}, "at least one"),
    ({"overlap": 0}, "overlap"),
    ({"gold_rate": 0.9}, "gold_rate"),
    ({"gold_rate": float("nan")}, "gold_rate"),
    ({"criteria_weights": {"beauty": 1}}, "criteria_weights"),
    ({"criteria_weights": {"empathy": True}}, "criteria_weights"),
    ({"protocol": "ranking"}, "protocol"),
    ({"sources": [{"kind": "baseline", "name": "missing"}]}, "no episode has candidates"),
    ({"bogus_option": 1}, "unknown campaign option"),
])
def test_bad_campaign_changes_nothing(corpus, change, field):
    options = {"name": "s", "slug": "s", "dataset": corpus, "sources": SOURCES,
               "episodes": list(corpus.episodes.all()), **change}
    with pytest.raises(CampaignError, match=field):
        campaign_create(**options)
    assert not Campaign.objects.exists() and not Item.objects.exists()
    assert not Clip.objects.exists()


def test_duplicate_slug_is_refused(corpus):
    make_campaign(corpus, slug="s")
    with pytest.raises(CampaignError, match="slug"):
        make_campaign(corpus, slug="s")


def test_campaign_starts_only_when_clips_are_rendered(corpus):
    campaign = campaign_create(name="s", slug="s", dataset=corpus, sources=SOURCES,
                               episodes=list(corpus.episodes.all())).campaign
    with pytest.raises(CampaignError, match="not rendered"):
        campaign_set_status(campaign=campaign, status="active")
    fake_render(campaign)
    assert campaign_set_status(campaign=campaign, status="active").status == "active"
    campaign_set_status(campaign=campaign, status="closed")
    with pytest.raises(CampaignError, match="closed"):
        campaign_set_status(campaign=campaign, status="active")
