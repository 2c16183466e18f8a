import json
import uuid

import pytest

from annotation.models import CRITERIA, Assignment, Campaign, Judgment
from annotation.rules import group_pairs
from annotation.services.judgments import judgment_submit
from annotation.services.scheduling import LeaseError, assignments_next
from tests.annotation.conftest import enrol, make_campaign

# Each test runs through the database functions and through the portable statements.
pytestmark = pytest.mark.usefixtures("both_rating_paths")


@pytest.fixture
def lease(corpus):
    campaign = make_campaign(corpus, reason_tags=["timing", "too still"])
    user, other = enrol(campaign, 2)
    lease = assignments_next(rater=user, campaign_slug=campaign.slug).assignments[0]
    return campaign, user, other, lease


def submit(user, lease, key=None, **kw):
    body = {"idempotency_key": key or uuid.uuid4(), "choice": "left", "decision_ms": 900, **kw}
    return judgment_submit(rater=user, token=str(lease.token), **body)


def test_a_retried_submission_is_stored_once(lease):
    _, user, _, a = lease
    key = uuid.uuid4()
    first = submit(user, a, key, strength=2, reasons=["timing"],
                   playback={"events": [{"t": 10, "e": "play"}], "stalls": 0})
    again = submit(user, a, key, strength=2, reasons=["timing"])
    assert first.created and not again.created
    assert first.judgment.pk == again.judgment.pk
    assert Judgment.objects.count() == 1
    j = Judgment.objects.get()
    assert (j.strength, j.reasons, j.playback["events"][0]["e"]) == (2, ["timing"], "play")
    assert Assignment.objects.get(pk=a.pk).status == "submitted"


@pytest.mark.parametrize("case, status", [
    ("other_key_same_lease", 409),
    ("key_reused_elsewhere", 409),
    ("someone_elses_lease", 403),
    ("unknown_lease", 404),
])
def test_forged_and_replayed_submissions_are_refused(lease, case, status):
    campaign, user, other, a = lease
    key = uuid.uuid4()
    submit(user, a, key)
    before = Judgment.objects.count()
    with pytest.raises(LeaseError) as exc:
        if case == "other_key_same_lease":
            submit(user, a)
        elif case == "key_reused_elsewhere":
            b = assignments_next(rater=user, campaign_slug=campaign.slug).assignments[0]
            submit(user, b, key)
        elif case == "someone_elses_lease":
            b = assignments_next(rater=user, campaign_slug=campaign.slug).assignments[0]
            submit(other, b)
        else:
            judgment_submit(rater=user, token=str(uuid.uuid4()), idempotency_key=uuid.uuid4(),
                            choice="left", decision_ms=1)
    assert exc.value.status == status
    assert Judgment.objects.count() == before


@pytest.mark.parametrize("change, message", [
    ({"choice": "up"}, "choice"),
    ({"choice": "tie", "strength": 2}, "strength"),
    ({"strength": 7}, "strength"),
    ({"strength": True}, "strength"),
    ({"reasons": ["not a tag"]}, "reasons"),
    ({"scores": [dict.fromkeys(CRITERIA, 3)] * 2}, "pairwise"),
    ({"scores": [{"empathy": 3}]}, "criteria"),
    ({"scores": "3 3 3"}, "list of score sets"),
    ({"decision_ms": -5}, "decision_ms"),
    ({"decision_ms": "fast"}, "decision_ms"),
    ({"idempotency_key": "not-a-uuid"}, "idempotency_key"),
    ({"playback": {"events": [{"t": float("nan")}]}}, "finite"),
    ({"playback": {"blob": "x" * 70_000}}, "bytes"),
    ({"playback": {"events": "lots"}}, "events"),
    ({"playback": {"events": [{"t": 1}] * 10, "note": "x" * 70_000}}, "without its events"),
    ({"playback": [1, 2]}, "object"),
])
def test_malformed_submissions_store_nothing(lease, change, message):
    _, user, _, a = lease
    with pytest.raises(LeaseError, match=message) as exc:
        submit(user, a, **change)
    assert exc.value.status == 400
    assert not Judgment.objects.exists()
    assert Assignment.objects.get(pk=a.pk).status == "active"


def test_group_scores_are_stored_in_slot_order_and_give_pairs(corpus):
    campaign = make_campaign(corpus, protocol="group", group_size=3)
    (user,) = enrol(campaign)
    a = assignments_next(rater=user, campaign_slug=campaign.slug).assignments[0]
    shown = [{"empathy": v, "appropriateness": v, "engagement": v, "naturalness": v}
             for v in (5, 3, 1)]
    j = judgment_submit(rater=user, token=str(a.token), idempotency_key=uuid.uuid4(),
                        scores=shown, decision_ms=5).judgment
    for position, slot in enumerate(a.order):
        assert j.scores[slot]["empathy"] == shown[position]["empathy"]
    best, worst, margin = group_pairs(j.scores, campaign.weights)[0]
    assert (best, worst, margin) == (a.order[0], a.order[2], 4.0)
    assert len(group_pairs(j.scores, campaign.weights)) == 3
    with pytest.raises(LeaseError, match="scores"):
        b = assignments_next(rater=user, campaign_slug=campaign.slug).assignments[0]
        judgment_submit(rater=user, token=str(b.token), idempotency_key=uuid.uuid4(),
                        scores=shown[:2], decision_ms=5)
    assert json.dumps(j.scores)


def _scores(best: int, runner_up: int, size: int) -> list[dict[str, int]]:
    """Scores by slot: ``best`` has the top empathy, ``runner_up`` the top everything else."""
    out = [dict.fromkeys(CRITERIA, 1) for _ in range(size)]
    out[best]["empathy"] = 5
    out[runner_up] = {**dict.fromkeys(CRITERIA, 5), "empathy": 2}
    return out


@pytest.mark.parametrize("consistent", [True, False])
def test_a_hidden_repeat_of_a_group_item_checks_the_best_candidate(corpus, monkeypatch,
                                                                   consistent):
    # given: a group campaign that weighs empathy alone, and hidden repeats whenever possible
    import annotation.services.scheduling as scheduling

    monkeypatch.setattr(scheduling, "probe_numbers", lambda: [0.1] * scheduling.PREFETCH)
    campaign = make_campaign(corpus, protocol="group", group_size=3, repeat_rate=0.5,
                             criteria_weights={"empathy": 1.0, "appropriateness": 0,
                                               "engagement": 0, "naturalness": 0})
    # (a weight that is not a number, as an admin edit could store, counts as the default 1)
    Campaign.objects.filter(pk=campaign.pk).update(criteria_weights={
        **campaign.criteria_weights, "empathy": 4, "naturalness": "much"})
    campaign.refresh_from_db()
    assert campaign.weights == {"empathy": 4.0, "appropriateness": 0.0, "engagement": 0.0,
                                "naturalness": 1.0}
    (user,) = enrol(campaign)
    # when: the rater scores the first slot shown best on every item, and on a repeat (sides
    # reversed) gives the top empathy to the same candidate, or to another one while scoring
    # the first one's best highest on everything else
    for _ in range(12):
        result = assignments_next(rater=user, campaign_slug=campaign.slug)
        if result.state != "rating":
            break
        a = result.assignments[0]
        if a.probe == "repeat":
            first = Judgment.objects.get(assignment=a.repeat_of)
            before = first.order[0]
            other = next(slot for slot in a.order if slot != before)
            by_slot = (_scores(before, other, 3) if consistent else _scores(other, before, 3))
        else:
            by_slot = _scores(a.order[0], a.order[1], 3)
        shown = [by_slot[slot] for slot in a.order]
        judgment_submit(rater=user, token=str(a.token), idempotency_key=uuid.uuid4(),
                        scores=shown, decision_ms=5)
    # then: each repeat passed exactly when the weighted best was the same candidate
    repeats = list(Judgment.objects.filter(probe="repeat"))
    assert repeats
    for j in repeats:
        first = Judgment.objects.get(assignment_id=j.assignment.repeat_of_id)
        assert j.qc["first"] == [first.order[0]]
        assert j.qc["passed"] is consistent
        assert (j.qc["best"] == j.qc["first"]) is consistent
    regular = Judgment.objects.filter(probe="none")
    assert all(j.qc == {} for j in regular)
    enrollment = user.enrollments.get()
    assert (enrollment.probes_passed, enrollment.probes_failed) == (
        (len(repeats), 0) if consistent else (0, len(repeats)))


@pytest.mark.parametrize("settings_, answer, message", [
    ({"protocol": "group", "group_size": 3}, {"choice": "left"}, "this campaign scores groups"),
    ({"protocol": "group", "group_size": 3}, {}, "a list of 3 score sets"),
    ({"protocol": "group", "group_size": 3},
     {"scores": [dict.fromkeys(CRITERIA, 2)] * 4}, "a list of 3 score sets"),
    ({"ask_strength": False}, {"choice": "left", "strength": 2}, "does not ask for strength"),
    ({}, {"choice": "tie", "strength": 1}, "only for a left or right choice"),
    ({}, {}, "choice: expected one of"),
    ({"reason_tags": ["timing"]}, {"choice": "left", "reasons": ["timing", "other"]},
     "reason tags"),
])
def test_an_answer_that_does_not_fit_its_campaign_stores_nothing(corpus, settings_, answer,
                                                                 message):
    # given: a lease in a campaign with these settings
    campaign = make_campaign(corpus, **settings_)
    (user,) = enrol(campaign)
    a = assignments_next(rater=user, campaign_slug=campaign.slug).assignments[0]
    # when/then: refused with words that say why, nothing stored, the lease still live
    with pytest.raises(LeaseError, match=message) as exc:
        judgment_submit(rater=user, token=str(a.token), idempotency_key=uuid.uuid4(),
                        decision_ms=5, **answer)
    assert exc.value.status == 400
    assert not Judgment.objects.exists()
    assert Assignment.objects.get(pk=a.pk).status == "active"
    fits = ({"scores": [dict.fromkeys(CRITERIA, 2)] * 3} if "group_size" in settings_
            else {"choice": "left"})
    assert judgment_submit(rater=user, token=str(a.token), idempotency_key=uuid.uuid4(),
                           decision_ms=5, **fits).created


def test_group_answers_keep_no_strength_or_reasons(corpus):
    campaign = make_campaign(corpus, protocol="group", group_size=3, reason_tags=["timing"])
    (user,) = enrol(campaign)
    a = assignments_next(rater=user, campaign_slug=campaign.slug).assignments[0]
    j = judgment_submit(rater=user, token=str(a.token), idempotency_key=uuid.uuid4(),
                        scores=[dict.fromkeys(CRITERIA, 3)] * 3, strength=2,
                        reasons=["timing"], decision_ms=5).judgment
    stored = Judgment.objects.get(pk=j.pk)
    assert (stored.strength, stored.reasons) == (j.strength, j.reasons) == (None, [])


def test_text_the_database_cannot_hold_is_a_400(lease):
    from django.db import connection

    _, user, _, a = lease
    cases = [{"reasons": ["\x00"]}]
    if connection.vendor == "postgresql":  # (SQLite keeps a NUL)
        cases.append({"playback": {"note": "a\x00b"}})
    for bad in cases:
        with pytest.raises(LeaseError) as exc:
            submit(user, a, **bad)
        assert exc.value.status == 400
    assert not Judgment.objects.exists()
    assert submit(user, a).created


def test_an_overlong_event_log_is_cut_not_refused(lease):
    _, user, _, a = lease
    events = [{"t": i, "e": "seeking", "v": 1, "p": i / 30} for i in range(5000)]
    j = submit(user, a, playback={"events": events, "plays": 1}).judgment
    kept = j.playback["events"]
    assert j.playback["events_cut"] == 5000 - len(kept) > 0
    assert kept[0]["t"] == 0 and kept[-1]["t"] == 4999  # the first and the last are kept
    assert len(json.dumps(j.playback)) <= 64 * 1024
