import threading
import time
import uuid

import pytest
from django.db import connection, connections, transaction
from django.test import Client
from django.urls import reverse

from annotation.models import CRITERIA, Campaign, Item, ItemMember, Judgment, Probe
from annotation.selectors import campaign_list_for
from annotation.services.campaigns import (
    CampaignError,
    CampaignInUse,
    campaign_create,
    campaign_delete,
    campaign_set_status,
    campaign_update,
    invite_create,
)
from rendering.models import Clip
from tests.annotation.conftest import SOURCES, enrol, fake_render, make_campaign
from tests.conftest import require_real_services


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


# -- changing, status and deleting ------------------------------------------------------------

def stored(campaign: Campaign) -> dict:
    """Every column of the campaign as stored, and who it is shared with."""
    row = Campaign.objects.filter(pk=campaign.pk).values().get()
    row["researchers"] = sorted(Campaign.objects.get(pk=campaign.pk).researchers
                                .values_list("pk", flat=True))
    return row


def answer_one(campaign: Campaign) -> None:
    """One rater answers one item through the rating API."""
    (user,) = enrol(campaign)
    c = Client()
    c.force_login(user)
    lease = c.post(reverse("annotation:api-next", args=[campaign.slug])).json()[
        "assignments"][0]
    res = c.post(reverse("annotation:api-judgment", args=[lease["id"]]),
                 {"idempotency_key": str(uuid.uuid4()), "choice": "left", "decision_ms": 5},
                 content_type="application/json")
    assert res.status_code == 201


@pytest.mark.parametrize("change, message", [
    ({"gold_rate": 0.9}, "gold_rate: must be a fraction between 0 and 0.5"),
    ({"gold_rate": float("inf")}, "gold_rate: must be a fraction"),
    ({"catch_rate": "0.1"}, "catch_rate: must be a fraction"),
    ({"gold_rate": 0.5, "catch_rate": 0.5}, "gold_rate: .* must be below 1"),
    ({"per_rater_limit": 0}, "per_rater_limit: must be a whole number 1.."),
    ({"per_rater_limit": 2**31}, "per_rater_limit: must be a whole number"),
    ({"per_rater_limit": True}, "per_rater_limit: must be a whole number"),
    ({"lease_seconds": 0}, "lease_seconds: must be a whole number 1..3600"),
    ({"warn_after": 9}, r"warn_after: .*warn_after <= block_after"),
    ({"block_after": 1}, r"block_after: .*warn_after <= block_after"),
    ({"criteria_weights": {"beauty": 1}}, "criteria_weights: 'beauty'=1 is not a known"),
    ({"criteria_weights": {"empathy": -1}}, "criteria_weights: 'empathy'=-1"),
    ({"criteria_weights": dict.fromkeys(CRITERIA, 0)}, "criteria_weights: at least one"),
    ({"reason_tags": ["timing", "timing"]}, "reason_tags: a tag is listed twice"),
    ({"reason_tags": "timing"}, "reason_tags: must be a list"),
    ({"crowd_param": "PID?x=1"}, "crowd_param: must be at most 40 letters"),
    ({"completion_url": "javascript:alert(1)"}, "completion_url: must be an http"),
    ({"name": "  "}, "name: must not be blank"),
    ({"ask_strength": "yes"}, "ask_strength: must be true or false"),
    ({"researchers": ["someone"]}, "researchers: must be a list of users"),
    ({"researchers": [10**9]}, "researchers: names a user that does not exist"),
    ({"status": "active"}, "status: changes through the status actions"),
    ({"slug": "other"}, "slug: cannot be changed after the campaign is made"),
    ({"ratings": {}}, "ratings: is computed from the judgments"),
    ({"colour": "red"}, "colour: is not a campaign setting"),
    # What the items were built from is fixed once they exist.
    ({"overlap": 5}, "overlap: the campaign's items are built from it"),
    ({"protocol": "group"}, "protocol: the campaign's items are built from it"),
    ({"sources": [{"kind": "ground_truth"}]}, "sources: the campaign's items are built"),
    ({"target_items": 5}, "target_items: the campaign's items are built from it"),
])
def test_a_refused_update_changes_nothing(corpus, change, message):
    # given a draft campaign with items
    campaign = make_campaign(corpus, start=False)
    before = stored(campaign)
    # when a valid change comes with a refused one
    with pytest.raises(CampaignError, match=message) as refused:
        campaign_update(campaign=campaign, instructions="Watch closely.", **change)
    # then the refusal names the field, and nothing was written
    assert refused.value.field == next(iter(change))
    assert stored(campaign) == before


def test_update_writes_what_differs(corpus, researcher):
    # given a draft campaign
    campaign = make_campaign(corpus, start=False)
    # when
    updated = campaign_update(campaign=campaign, name=campaign.name, instructions="Watch.",
                              gold_rate=0.2, criteria_weights={"empathy": 2.0},
                              reason_tags=["timing"], researchers=[researcher])
    # then
    row = stored(campaign)
    assert (row["instructions"], row["gold_rate"], row["reason_tags"]) == (
        "Watch.", 0.2, ["timing"])
    assert row["criteria_weights"] == {"empathy": 2.0}
    assert row["researchers"] == [researcher.pk] and updated.instructions == "Watch."
    assert campaign_list_for(researcher).filter(pk=campaign.pk).exists()  # shared with them


@pytest.mark.parametrize("status", ["active", "paused"])
def test_what_answers_mean_is_fixed_once_raters_are_served(corpus, status):
    # given a campaign that has served raters
    campaign = make_campaign(corpus)
    if status == "paused":
        campaign_set_status(campaign=campaign, status="paused")
    # then what a judgment records, and what raters agreed to, no longer changes
    for change in ({"ask_strength": False}, {"reason_tags": ["other"]},
                   {"criteria_weights": {"empathy": 3}}, {"consent_text": "New terms."}):
        with pytest.raises(CampaignError, match=f"only while the campaign is a draft "
                                                f"\\(it is {status}\\)"):
            campaign_update(campaign=campaign, **change)
    # and how it is run still does
    campaign_update(campaign=campaign, instructions="Take a break every 20 items.",
                    per_rater_limit=30, gold_rate=0.2, lease_seconds=120, block_after=9)
    campaign.refresh_from_db()
    assert (campaign.per_rater_limit, campaign.gold_rate, campaign.block_after) == (30, 0.2, 9)


def test_a_closed_campaign_changes_only_its_labels(corpus, researcher):
    campaign = make_campaign(corpus)
    campaign_set_status(campaign=campaign, status="closed")
    with pytest.raises(CampaignError, match="instructions: the campaign is closed"):
        campaign_update(campaign=campaign, instructions="More.")
    campaign_update(campaign=campaign, name="Pilot (done)", researchers=[researcher])
    assert stored(campaign)["name"] == "Pilot (done)"


def test_create_refuses_what_the_platform_sets_and_rules_across_settings(corpus):
    options = {"name": "s", "slug": "s", "dataset": corpus, "sources": SOURCES,
               "episodes": list(corpus.episodes.all())}
    for change, message in [
        ({"status": "active"}, "status: is set by the platform"),
        ({"gold_rate": 0.5, "catch_rate": 0.3, "repeat_rate": 0.2}, "below 1"),
        ({"warn_after": 6}, "warn_after <= block_after"),
        ({"slug": "not a slug"}, "slug: must be at most 100 letters"),
        ({"group_size": 1, "protocol": "group"}, "group_size: must be a whole number 2..8"),
    ]:
        with pytest.raises(CampaignError, match=message):
            campaign_create(**{**options, **change})
    assert not Campaign.objects.exists() and not Item.objects.exists()


@pytest.mark.parametrize("start, to, message", [
    ("draft", "paused", "that is draft can become active or closed, not paused"),
    ("active", "draft", "that is active can become closed or paused, not draft"),
    ("paused", "draft", "that is paused can become active or closed, not draft"),
    ("closed", "paused", "a closed campaign stays closed"),
    ("draft", "running", "status: expected one of"),
])
def test_only_the_allowed_status_changes(corpus, start, to, message):
    campaign = make_campaign(corpus, start=start != "draft")
    if start in ("paused", "closed"):
        campaign_set_status(campaign=campaign, status=start)
    with pytest.raises(CampaignError, match=message):
        campaign_set_status(campaign=campaign, status=to)
    assert stored(campaign)["status"] == start


def test_status_round_trip_and_asking_twice(corpus):
    campaign = make_campaign(corpus)
    for status in ("paused", "paused", "active", "active", "closed", "closed"):
        assert campaign_set_status(campaign=campaign, status=status).status == status


def test_delete_a_draft_takes_its_items_and_keeps_the_clips(corpus):
    campaign = make_campaign(corpus, start=False)
    clips = Clip.objects.count()
    campaign_delete(campaign=campaign)
    assert not Campaign.objects.exists() and not Item.objects.exists()
    assert Clip.objects.count() == clips  # addressed by content, shared with other campaigns
    campaign_delete(campaign=campaign)  # gone already: nothing to do


def test_delete_is_refused_with_judgments_while_serving_and_with_live_leases(corpus):
    # given an active campaign
    campaign = make_campaign(corpus)
    with pytest.raises(CampaignInUse, match="status: the campaign is serving raters") as exc:
        campaign_delete(campaign=campaign)
    assert exc.value.code == "active"
    # a rater holding items when it is paused
    (user,) = enrol(campaign)
    c = Client()
    c.force_login(user)
    assert c.post(reverse("annotation:api-next", args=[campaign.slug])).status_code == 200
    campaign_set_status(campaign=campaign, status="paused")
    with pytest.raises(CampaignInUse, match="items are on raters' screens") as exc:
        campaign_delete(campaign=campaign)
    assert exc.value.code == "live_leases"
    # and once it has judgments: close it instead
    campaign_set_status(campaign=campaign, status="active")
    answer_one(campaign)
    campaign_set_status(campaign=campaign, status="closed")
    with pytest.raises(CampaignInUse, match="judgments: the campaign has 1; .* close the") as exc:
        campaign_delete(campaign=campaign)
    assert exc.value.code == "has_judgments"
    assert Campaign.objects.filter(pk=campaign.pk).exists() and Judgment.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_an_update_waits_for_a_status_change_and_is_judged_against_it():
    """The row lock: an edit that starts while the campaign is being started is checked against
    the started campaign, not the draft it read before."""
    require_real_services()
    campaign = make_campaign(start=False)
    started, release = threading.Event(), threading.Event()
    outcome: list[object] = []

    def start() -> None:
        try:
            with transaction.atomic():
                campaign_set_status(campaign=campaign, status="active")
                started.set()
                release.wait(10)
        finally:
            connections.close_all()

    def edit() -> None:
        try:
            campaign_update(campaign=campaign, consent_text="New terms.")
            outcome.append("changed")
        except CampaignError as exc:
            outcome.append(exc)
        finally:
            connections.close_all()

    starter = threading.Thread(target=start)
    starter.start()
    assert started.wait(10)
    editor = threading.Thread(target=edit)
    editor.start()
    # the edit waits for the row lock the status change holds
    with connection.cursor() as cursor:
        for _ in range(100):
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = "
                           "'Lock' AND datname = current_database()")
            if cursor.fetchone()[0]:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the edit did not wait for the campaign's row lock")
    release.set()
    starter.join(10)
    editor.join(10)
    (result,) = outcome
    assert isinstance(result, CampaignError) and "it is active" in str(result)
    assert Campaign.objects.get(pk=campaign.pk).consent_text == ""


# -- duplicate sources and integers beyond their columns ----------------------------------------

@pytest.mark.parametrize("sources, message", [
    ([{"kind": "ground_truth"}, {"kind": "ground_truth"}],
     r"sources\[1\] .* repeats sources\[0\]"),
    ([{"kind": "ground_truth"}, {"kind": "baseline", "name": "jitter"},
      {"kind": "baseline", "name": "jitter"}], r"sources\[2\] .* repeats sources\[1\]"),
    # keys the builder does not read do not make another source: the same candidates are taken
    ([{"kind": "baseline", "name": "jitter", "seed": 1},
      {"kind": "baseline", "name": "jitter", "seed": 2, "samples": 1}],
     r"sources\[1\] .* repeats sources\[0\]"),
])
def test_a_source_listed_twice_is_refused(corpus, sources, message):
    # given sources of which two take the same candidates
    options = {"name": "s", "slug": "s", "dataset": corpus, "sources": sources,
               "episodes": list(corpus.episodes.all())}
    # when the campaign is made, then it is refused by the sources field and nothing is made
    with pytest.raises(CampaignError, match=message) as refused:
        campaign_create(**options)
    assert refused.value.field == "sources"
    assert not Campaign.objects.exists() and not Item.objects.exists()
    assert not Clip.objects.exists()


def test_a_source_listed_twice_is_refused_by_an_update(corpus):
    campaign = make_campaign(corpus, start=False)
    Item.objects.filter(campaign=campaign).delete()
    with pytest.raises(CampaignError, match=r"sources\[1\] .* repeats sources\[0\]"):
        campaign_update(campaign=campaign, sources=[{"kind": "ground_truth"},
                                                    {"kind": "ground_truth"}])
    campaign.refresh_from_db()
    assert campaign.sources == SOURCES


@pytest.mark.parametrize("field", ["per_rater_limit", "overlap", "target_items", "group_size",
                                   "lease_seconds", "warn_after", "block_after"])
def test_an_integer_beyond_its_column_is_refused(corpus, field):
    # a pairwise campaign does not use group_size, but stores it
    options = {"name": "s", "slug": "s", "dataset": corpus, "sources": SOURCES,
               "episodes": list(corpus.episodes.all()), field: 2**31}
    with pytest.raises(CampaignError, match=f"^{field}: ") as refused:
        campaign_create(**options)
    assert refused.value.field == field
    assert not Campaign.objects.exists()


def test_an_invite_beyond_its_column_is_refused(corpus):
    campaign = make_campaign(corpus, start=False)
    with pytest.raises(CampaignError, match="^max_uses: ") as refused:
        invite_create(campaign=campaign, max_uses=2**31)
    assert refused.value.field == "max_uses" and not campaign.invites.exists()
