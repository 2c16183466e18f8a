from datetime import timedelta

import pytest
from django.utils import timezone

from annotation.models import Assignment, AssignmentStatus, Item, Judgment, Probe
from annotation.selectors import campaign_progress
from annotation.services.judgments import judgment_submit
from annotation.services.ordering import bradley_terry, campaign_reprioritise
from annotation.services.scheduling import (
    PREFETCH,
    LeaseError,
    assignment_heartbeat,
    assignments_expire,
    assignments_next,
)
from annotation.tasks import expire_leases_task
from tests.annotation.conftest import enrol, make_campaign

# Each test runs through the database functions and through the portable statements.
pytestmark = pytest.mark.usefixtures("both_rating_paths")


def answer(user, lease, choice="left", **kw):
    import uuid

    return judgment_submit(rater=user, token=str(lease.token), idempotency_key=uuid.uuid4(),
                           choice=choice, decision_ms=1000, **kw)


def rate_all(campaign, user, limit=100):
    n = 0
    for _ in range(limit):
        result = assignments_next(rater=user, campaign_slug=campaign.slug)
        if result.state != "rating":
            return n, result.state
        answer(user, result.assignments[0])
        n += 1
    return n, "rating"


def test_next_leases_the_current_and_the_preloaded_item_and_a_second_tab_gets_the_same(corpus):
    campaign = make_campaign(corpus)
    (user,) = enrol(campaign)
    first = assignments_next(rater=user, campaign_slug=campaign.slug)
    again = assignments_next(rater=user, campaign_slug=campaign.slug)
    assert len(first.assignments) == PREFETCH
    assert [a.token for a in first.assignments] == [a.token for a in again.assignments]
    assert Assignment.objects.count() == PREFETCH


def test_overlap_is_never_exceeded_and_every_item_is_filled(corpus):
    # given overlap 2 and five raters who each answer everything they are offered
    campaign = make_campaign(corpus, overlap=2)
    users = enrol(campaign, 5)
    for user in users:
        rate_all(campaign, user)
    # then each item has exactly two judgments, from two different raters
    for item in Item.objects.filter(campaign=campaign):
        raters = list(Judgment.objects.filter(item=item).values_list("rater", flat=True))
        assert len(raters) == item.n_judgments == 2
        assert len(set(raters)) == 2
    assert not Assignment.objects.filter(status=AssignmentStatus.ACTIVE).exists()


def test_sides_are_shuffled_per_exposure_and_outcome_is_in_item_terms(corpus):
    campaign = make_campaign(corpus, overlap=20)
    users = enrol(campaign, 12)
    orders = set()
    for user in users:
        lease = assignments_next(rater=user, campaign_slug=campaign.slug).assignments[0]
        orders.add(tuple(lease.order))
        j = answer(user, lease, "left").judgment
        assert j.outcome == ("a" if lease.order[0] == 0 else "b")
        assert j.order == lease.order
    assert orders == {(0, 1), (1, 0)}


def test_an_abandoned_lease_expires_and_its_item_is_served_again(corpus):
    campaign = make_campaign(corpus, overlap=1, lease_seconds=30)
    first, second = enrol(campaign, 2)
    leases = assignments_next(rater=first, campaign_slug=campaign.slug).assignments
    held = {a.item_id for a in leases}
    # while held, nobody else gets those items
    other = rate_all(campaign, second)[0]
    assert other == Item.objects.count() - len(held)
    # when the page is abandoned (no heartbeat), the leases run out
    Assignment.objects.filter(rater=first).update(expires_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(LeaseError) as exc:
        answer(first, leases[0])
    assert exc.value.status == 410
    assert assignments_expire() == 2
    expire_leases_task()  # again: nothing left to do
    assert Assignment.objects.filter(status=AssignmentStatus.EXPIRED).count() == 2
    # then the items go to the next rater who asks
    assert rate_all(campaign, second)[0] == len(held)
    assert not Judgment.objects.filter(rater=first).exists()


def test_a_gold_item_is_shown_once_unless_its_lease_ran_out(corpus, monkeypatch):
    # given: two gold items, and every lease after a rater's first a gold one while one is left
    import annotation.services.scheduling as scheduling

    monkeypatch.setattr(scheduling, "probe_numbers", lambda: [0.01] * PREFETCH)
    campaign = make_campaign(corpus, overlap=3, gold_rate=0.5)
    golds = set(Item.objects.filter(campaign=campaign, probe=Probe.GOLD)
                .values_list("pk", flat=True))
    assert len(golds) == 2
    steady, leaver = enrol(campaign, 2)

    def gold_shown(user, answers: int) -> list[int]:
        shown: dict[int, int] = {}  # lease -> item, each gold lease once
        for _ in range(answers):
            result = assignments_next(rater=user, campaign_slug=campaign.slug)
            shown |= {a.pk: a.item_id for a in result.assignments if a.probe == Probe.GOLD}
            answer(user, result.assignments[0])
        return sorted(shown.values())

    # when one rater answers everything: each gold item once
    assert gold_shown(steady, 6) == sorted(golds)
    # when another rater's first gold lease runs out unanswered
    leases = assignments_next(rater=leaver, campaign_slug=campaign.slug).assignments
    (lost,) = [a.item_id for a in leases if a.probe == Probe.GOLD]
    Assignment.objects.filter(rater=leaver).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert assignments_expire() == PREFETCH
    # then that item can come again: the rater answers both gold items after all
    assert gold_shown(leaver, 6) == sorted(golds)
    assert Judgment.objects.filter(rater=leaver, item_id=lost).count() == 1


def test_heartbeat_extends_all_of_the_raters_leases(corpus):
    campaign = make_campaign(corpus, lease_seconds=60)
    (user,) = enrol(campaign)
    leases = assignments_next(rater=user, campaign_slug=campaign.slug).assignments
    Assignment.objects.filter(rater=user).update(expires_at=timezone.now() + timedelta(seconds=5))
    expires = assignment_heartbeat(rater=user, token=str(leases[0].token))
    assert expires > timezone.now() + timedelta(seconds=55)
    assert all(a.expires_at == expires for a in Assignment.objects.filter(rater=user))
    (other,) = enrol(campaign)
    with pytest.raises(LeaseError) as exc:
        assignment_heartbeat(rater=other, token=str(leases[0].token))
    assert exc.value.status == 403


def test_per_rater_limit_then_finished(corpus):
    campaign = make_campaign(corpus, per_rater_limit=3, overlap=5)
    (user,) = enrol(campaign)
    n, state = rate_all(campaign, user)
    assert (n, state) == (3, "finished")
    assert user.enrollments.get().finished_at is not None


def test_probes_are_mixed_in_and_scored(corpus):
    campaign = make_campaign(corpus, overlap=3, gold_rate=0.3, catch_rate=0.2, repeat_rate=0.2)
    users = enrol(campaign, 3)
    for user in users:
        for _ in range(30):
            result = assignments_next(rater=user, campaign_slug=campaign.slug)
            if result.state != "rating":
                break
            lease = result.assignments[0]
            # a perfect rater: ground truth on gold, tie on catch, consistent on repeats
            if lease.probe == Probe.CATCH:
                choice = "tie"
            elif lease.probe == Probe.GOLD:
                choice = "left" if lease.order[0] == 0 else "right"
            elif lease.probe == Probe.REPEAT:
                first = Judgment.objects.get(assignment=lease.repeat_of)
                assert lease.order == list(reversed(first.order))
                choice = {"left": "right", "right": "left"}.get(first.choice, first.choice)
            else:
                choice = "left"
            answer(user, lease, choice)
    probes = Judgment.objects.exclude(probe=Probe.NONE)
    assert {j.probe for j in probes} == {"gold", "catch", "repeat"}
    assert all(j.qc["passed"] for j in probes)
    summary = campaign_progress(campaign)["probes"]
    for name in ("gold", "catch", "repeat"):
        answered = probes.filter(probe=name).count()
        assert summary[name] == {"answered": answered, "passed": answered, "rate": 1.0}
    # probes never count toward an item's overlap
    for item in Item.objects.filter(probe=Probe.NONE):
        assert item.n_judgments == Judgment.objects.filter(item=item, probe=Probe.NONE).count()


def test_a_rater_failing_probes_is_warned_then_blocked(corpus):
    campaign = make_campaign(corpus, overlap=3, catch_rate=0.5, block_after=2)
    (user,) = enrol(campaign)
    state = "rating"
    for _ in range(40):
        result = assignments_next(rater=user, campaign_slug=campaign.slug)
        state = result.state
        if state != "rating":
            break
        answer(user, result.assignments[0], "left")  # never "tie", fails every catch trial
    assert state == "blocked"
    assert user.enrollments.get().probes_failed == 2


def test_active_order_serves_uncertain_items_first(corpus):
    campaign = make_campaign(corpus, overlap=3)
    users = enrol(campaign, 2)
    for user in users:
        rate_all(campaign, user, limit=6)
    assert campaign_reprioritise(campaign_id=campaign.pk) > 0
    campaign.refresh_from_db()
    assert set(campaign.ratings) >= {"ground_truth"}
    top = Item.objects.filter(campaign=campaign, n_judgments__lt=3).order_by("-priority").first()
    bottom = Item.objects.filter(campaign=campaign, n_judgments__lt=3).order_by("priority").first()
    assert top.priority > bottom.priority


def test_bradley_terry_orders_players_by_wins():
    r = bradley_terry({("a", "b"): 8, ("b", "a"): 2, ("b", "c"): 8, ("c", "b"): 2})
    assert r["a"] > r["b"] > r["c"]


def test_items_held_by_other_raters_leases_do_not_end_the_campaign_early(corpus):
    # given overlap 1 and three raters holding two leases each on the first items in order
    campaign = make_campaign(corpus, overlap=1)
    holders = enrol(campaign, 3)
    held = set()
    for user in holders:
        held |= {a.item_id for a in
                 assignments_next(rater=user, campaign_slug=campaign.slug).assignments}
    assert len(held) == 6
    # when one more rater asks, they still get items (the free ones), not "finished"
    (late,) = enrol(campaign)
    result = assignments_next(rater=late, campaign_slug=campaign.slug)
    assert result.state == "rating"
    assert {a.item_id for a in result.assignments}.isdisjoint(held)


def test_a_rater_excluded_by_quality_control_is_served_nothing_and_frees_their_items(corpus):
    from annotation.services.enrollment import enrollment_set_excluded

    # given: two raters, the first holding leases and with one answer stored
    campaign = make_campaign(corpus, overlap=1)
    excluded, other = enrol(campaign, 2)
    first = assignments_next(rater=excluded, campaign_slug=campaign.slug).assignments
    answer(excluded, first[0])
    held = [a.item_id for a in assignments_next(rater=excluded,
                                                 campaign_slug=campaign.slug).assignments]
    # when quality control excludes them
    enrollment_set_excluded(enrollment=excluded.enrollments.get(), excluded=True)
    # then they are told they are finished, hold nothing, and keep what they answered
    result = assignments_next(rater=excluded, campaign_slug=campaign.slug)
    assert (result.state, result.assignments) == ("finished", [])
    assert not Assignment.objects.filter(rater=excluded, status=AssignmentStatus.ACTIVE).exists()
    assert Judgment.objects.filter(rater=excluded).count() == 1
    # and the items they held go to the other rater
    n, _ = rate_all(campaign, other)
    assert n == Item.objects.filter(campaign=campaign, probe=Probe.NONE).count() - 1
    assert set(held) <= set(Judgment.objects.filter(rater=other).values_list("item_id", flat=True))
    # and taken back, they are served again
    enrollment_set_excluded(enrollment=excluded.enrollments.get(), excluded=False)
    assert assignments_next(rater=excluded, campaign_slug=campaign.slug).state != "blocked"


def test_a_rater_blocked_by_an_answer_in_another_tab_loses_the_leases_it_was_given(
        corpus, monkeypatch):
    # given: a rater one failed probe from being blocked, served catch trials only, whose
    # counters change after the answer's read (their other tab's answer counted in between)
    import annotation.services.judgments as judgments
    import annotation.services.scheduling as scheduling
    from annotation.models import Enrollment

    monkeypatch.setattr(scheduling, "probe_numbers", lambda: [0.01] * PREFETCH)
    campaign = make_campaign(corpus, overlap=3, catch_rate=0.5, block_after=2)
    (user,) = enrol(campaign)
    answer(user, assignments_next(rater=user, campaign_slug=campaign.slug).assignments[0])
    catch = next(a for a in assignments_next(rater=user, campaign_slug=campaign.slug).assignments
                 if a.probe == Probe.CATCH)
    read = judgments._context

    def read_then_other_tab(token, campaign_id):
        context = read(token, campaign_id)
        Enrollment.objects.filter(rater=user).update(probes_failed=1)
        return context

    monkeypatch.setattr(judgments, "_context", read_then_other_tab)
    # when the answer fails the catch trial
    submitted = answer(user, catch, "left", top_up=True)
    # then the rules still block the rater, who holds nothing
    assert submitted.next.state == "blocked"
    enrollment = user.enrollments.get()
    assert enrollment.blocked and enrollment.probes_failed == 2
    assert not Assignment.objects.filter(rater=user, status=AssignmentStatus.ACTIVE).exists()


def test_a_rater_blocked_by_their_answer_lets_go_of_the_preloaded_item(corpus, monkeypatch):
    # given: a rater served catch trials, one failure from being blocked, holding two leases
    import annotation.services.scheduling as scheduling

    monkeypatch.setattr(scheduling, "probe_numbers", lambda: [0.01] * PREFETCH)
    campaign = make_campaign(corpus, overlap=3, catch_rate=0.5, warn_after=1,
                             block_after=1)
    (user,) = enrol(campaign)
    answer(user, assignments_next(rater=user, campaign_slug=campaign.slug).assignments[0])
    leases = assignments_next(rater=user, campaign_slug=campaign.slug).assignments
    assert len(leases) == PREFETCH
    catch = next(a for a in leases if a.probe == Probe.CATCH)
    # when the answer fails the catch trial
    submitted = answer(user, catch, "left", top_up=True)
    # then the rater is blocked and holds nothing: the other item is free for others
    assert submitted.next.state == "blocked"
    assert not Assignment.objects.filter(rater=user, status=AssignmentStatus.ACTIVE).exists()
