"""The rating rules on their own: no database, no lease, plain values in and decisions out."""

import math

import pytest

from annotation import rules
from annotation.models import CRITERIA
from annotation.rules import (
    Answer,
    FirstAnswer,
    LeaseError,
    Meaning,
    ProbeRates,
    Rules,
    answer_meaning,
    answer_shape,
    blocks,
    group_best,
    group_pairs,
    heartbeat_refusal,
    lease_refusal,
    probe_counts,
    probe_draws,
    probe_kind,
    probe_verdict,
    serving_state,
    store_refusal,
    warned,
)

PAIRWISE = Rules("pairwise", ask_strength=True, reason_tags=["timing", "too still"],
                 weights=dict.fromkeys(CRITERIA, 1.0))
GROUP = Rules("group", ask_strength=False, reason_tags=[], weights=dict.fromkeys(CRITERIA, 1.0))


def shaped(**kw) -> Answer:
    body = {"choice": None, "strength": None, "reasons": None, "scores": None,
            "decision_ms": 900, "viewing_ms": 0, "playback": None, **kw}
    return answer_shape(**body)


def scores(*values: int) -> list[dict[str, int]]:
    return [dict.fromkeys(CRITERIA, v) for v in values]


# --- shape -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, words", [
    ({"decision_ms": -1}, "decision_ms"),
    ({"decision_ms": True}, "decision_ms"),
    ({"viewing_ms": 10**12}, "viewing_ms"),
    ({"choice": "up"}, "choice"),
    ({"choice": "left", "strength": 4}, "strength"),
    ({"choice": "left", "strength": False}, "strength"),
    ({"choice": "left", "reasons": "timing"}, "reasons"),
    ({"choice": "left", "reasons": [1]}, "reasons"),
    ({"scores": {"empathy": 3}}, "scores"),
    ({"scores": [{"empathy": 3}]}, "scores[0]"),
    ({"scores": [dict.fromkeys(CRITERIA, 6)]}, "scores[0]"),
    ({"scores": [dict.fromkeys(CRITERIA, 2.5)]}, "scores[0]"),
    ({"choice": "left", "playback": []}, "playback"),
    ({"choice": "left", "playback": {"events": {}}}, "playback.events"),
    ({"choice": "left", "playback": {"t": math.nan}}, "finite"),
])
def test_a_malformed_answer_is_a_400_that_names_its_field(kw, words):
    with pytest.raises(LeaseError) as exc:
        shaped(**kw)
    assert exc.value.status == 400 and words in exc.value.message


def test_a_well_formed_answer_is_kept_in_a_canonical_form():
    answer = shaped(choice="left", strength=2, reasons=["too still", "timing", "timing"])
    assert (answer.choice, answer.strength, answer.reasons) == ("left", 2, ["timing", "too still"])
    group = shaped(scores=[{**dict.fromkeys(reversed(CRITERIA), 3)}])
    assert list(group.scores[0]) == list(CRITERIA)


def test_a_long_playback_log_is_cut_not_refused():
    events = [{"t": i, "e": "seek", "pad": "x" * 40} for i in range(5000)]
    kept = shaped(choice="tie", playback={"events": events}).playback
    assert kept["events_cut"] > 0
    assert kept["events"][0] == events[0] and kept["events"][-1] == events[-1]
    assert len(kept["events"]) + kept["events_cut"] == len(events)


# --- meaning ---------------------------------------------------------------------------------

@pytest.mark.parametrize("choice, order, outcome", [
    ("left", [0, 1], "a"), ("left", [1, 0], "b"), ("right", [0, 1], "b"),
    ("right", [1, 0], "a"), ("tie", [1, 0], "tie"), ("both_bad", [0, 1], "both_bad"),
])
def test_the_side_pressed_becomes_the_items_slot(choice, order, outcome):
    meaning = answer_meaning(shaped(choice=choice), rules=PAIRWISE, order=order)
    assert (meaning.choice, meaning.outcome) == (choice, outcome)


def test_group_scores_are_stored_in_slot_order():
    # shown: slot 2, slot 0, slot 1
    meaning = answer_meaning(shaped(scores=scores(5, 1, 3)), rules=GROUP, order=[2, 0, 1])
    assert [s["empathy"] for s in meaning.scores] == [1, 3, 5]
    assert (meaning.choice, meaning.outcome, meaning.strength, meaning.reasons) == ("", "", None,
                                                                                    [])


@pytest.mark.parametrize("campaign, kw, key", [
    (PAIRWISE, {"scores": scores(3, 3)}, "scores_for_pairwise"),
    (PAIRWISE, {}, "choice"),
    (Rules("pairwise", False, [], {}), {"choice": "left", "strength": 2}, "strength_not_asked"),
    (PAIRWISE, {"choice": "tie", "strength": 2}, "strength_side"),
    (PAIRWISE, {"choice": "left", "reasons": ["boring"]}, "reasons"),
    (GROUP, {"choice": "left"}, "choice_for_group"),
    (GROUP, {"scores": scores(3, 3)}, "scores_count"),
])
def test_an_answer_that_does_not_fit_its_campaign_is_refused(campaign, kw, key):
    with pytest.raises(LeaseError) as exc:
        answer_meaning(shaped(**kw), rules=campaign, order=[0, 1, 2][: 3 if campaign is GROUP
                                                                      else 2])
    assert exc.value.status == 400
    assert exc.value.message == rules.MISFITS[key].format(3)


# --- probes ----------------------------------------------------------------------------------

def pair(outcome: str) -> Meaning:
    return Meaning(outcome if outcome in ("tie", "both_bad") else "left", outcome, None, [], None)


@pytest.mark.parametrize("probe, outcome, passed", [
    ("gold", "a", True), ("gold", "b", False), ("gold", "tie", False),
    ("catch", "tie", True), ("catch", "a", False), ("catch", "both_bad", False),
])
def test_gold_and_catch_verdicts(probe, outcome, passed):
    assert probe_verdict(probe, pair(outcome), rules=PAIRWISE) == {"probe": probe,
                                                                    "passed": passed}


def test_a_regular_item_has_no_verdict():
    assert probe_verdict("none", pair("a"), rules=PAIRWISE) == {}
    assert probe_counts({}) == (0, 0)


@pytest.mark.parametrize("first, now, passed", [("a", "a", True), ("a", "b", False),
                                                ("tie", "tie", True), (None, "a", False)])
def test_a_pairwise_repeat_passes_with_the_same_outcome(first, now, passed):
    before = FirstAnswer(first, None) if first else None
    qc = probe_verdict("repeat", pair(now), rules=PAIRWISE, first=before)
    assert qc == {"probe": "repeat", "passed": passed, "first": first}
    assert probe_counts(qc) == ((1, 0) if passed else (0, 1))


def test_a_group_repeat_passes_when_a_best_candidate_is_best_again():
    empathy_only = Rules("group", False, [], {**dict.fromkeys(CRITERIA, 0.0), "empathy": 1.0})
    first = FirstAnswer("", [{**dict.fromkeys(CRITERIA, 1), "empathy": 5},
                             {**dict.fromkeys(CRITERIA, 5), "empathy": 4},
                             dict.fromkeys(CRITERIA, 1)])
    same = Meaning("", "", None, [], [{**dict.fromkeys(CRITERIA, 5), "empathy": 4},
                                      {**dict.fromkeys(CRITERIA, 1), "empathy": 2},
                                      dict.fromkeys(CRITERIA, 1)])
    other = Meaning("", "", None, [], list(reversed(same.scores)))
    assert probe_verdict("repeat", same, rules=empathy_only, first=first) == {
        "probe": "repeat", "passed": True, "first": [0], "best": [0]}
    assert probe_verdict("repeat", other, rules=empathy_only, first=first)["passed"] is False


def test_group_best_reports_ties_and_group_pairs_start_with_best_vs_worst():
    weights = dict.fromkeys(CRITERIA, 1.0)
    assert group_best(scores(4, 2, 4), weights) == [0, 2]
    assert group_best(None, weights) == []
    pairs = group_pairs(scores(3, 5, 1), weights)
    assert pairs[0] == (1, 2, 4.0)
    assert sorted(pairs) == [(0, 2, 2.0), (1, 0, 2.0), (1, 2, 4.0)]
    assert group_pairs(scores(3, 3), weights) == []


def test_zero_weights_leave_no_slot_ahead():
    # all weights zero: every slot's weighted score is zero, so every slot ties for best
    assert group_best(scores(2, 3), dict.fromkeys(CRITERIA, 0.0)) == [0, 1]


@pytest.mark.parametrize("u, kind", [(0.0, "gold"), (0.099, "gold"), (0.1, "catch"),
                                     (0.149, "catch"), (0.151, "repeat"), (0.249, "repeat"),
                                     (0.251, ""), (0.999, "")])
def test_probe_kinds_are_drawn_at_the_campaigns_rates(u, kind):
    assert probe_kind(ProbeRates(gold=0.1, catch=0.05, repeat=0.1), u) == kind


def test_a_raters_first_item_is_never_a_probe():
    rates = ProbeRates(1.0, 0.0, 0.0)
    assert probe_draws(rates, [0.5, 0.5], answered=0) == ["", "gold"]
    assert probe_draws(rates, [0.5, 0.5], answered=1) == ["gold", "gold"]
    assert probe_draws(rates, [], answered=0) == []


# --- leases and raters -----------------------------------------------------------------------

@pytest.mark.parametrize("kw, code", [
    ({}, None),
    ({"rater_active": False}, "account_disabled"),
    ({"lease_rater_id": 8}, "not_your_lease"),
    ({"status": "submitted"}, "already_answered"),
    ({"status": "expired"}, "lease_expired"),
    ({"expired": True}, "lease_expired"),
    # a closed campaign takes nothing more; a paused one's live leases still take answers
    ({"campaign_status": "closed"}, "campaign_closed"),
    ({"campaign_status": "closed", "status": "expired"}, "campaign_closed"),
    ({"campaign_status": "paused"}, None),
    # the account first, then whose lease it is, then its campaign, then its state
    ({"rater_active": False, "lease_rater_id": 8, "status": "submitted"}, "account_disabled"),
    ({"lease_rater_id": 8, "status": "submitted"}, "not_your_lease"),
    ({"lease_rater_id": 8, "campaign_status": "closed"}, "not_your_lease"),
])
def test_lease_refusals(kw, code):
    args = {"rater_id": 7, "lease_rater_id": 7, "rater_active": True, "status": "active",
            "expired": False, "campaign_status": "active", **kw}
    assert lease_refusal(**args) == code


@pytest.mark.parametrize("kw, code", [
    ({}, None),
    ({"campaign_status": "paused"}, "campaign_paused"),
    ({"campaign_status": "closed"}, "campaign_closed"),
    # the lease's own refusals come first: a paused campaign's ended lease has ended
    ({"campaign_status": "paused", "expired": True}, "lease_expired"),
    ({"campaign_status": "paused", "lease_rater_id": 8}, "not_your_lease"),
])
def test_heartbeat_refusals(kw, code):
    args = {"rater_id": 7, "lease_rater_id": 7, "rater_active": True, "status": "active",
            "expired": False, "campaign_status": "active", **kw}
    assert heartbeat_refusal(**args) == code


def test_a_store_that_did_not_happen_is_named():
    def named(**kw):
        return store_refusal(**{"campaign_status": "active", **kw})

    assert named(key_taken=False, status="submitted", expired=False) == "already_answered"
    assert named(key_taken=False, status="active", expired=True) == "lease_expired"
    assert named(key_taken=True, status="active", expired=False) == "key_reused"
    # closing ends the leases: the campaign names the refusal, not the lease it ended
    assert named(key_taken=False, status="expired", expired=False,
                 campaign_status="closed") == "campaign_closed"
    with pytest.raises(AssertionError):
        named(key_taken=False, status="active", expired=False)


def test_every_refusal_has_a_status_and_words():
    for code, (status, words) in rules.REFUSALS.items():
        error = rules.refusal(code)
        assert (error.code, error.status, error.message) == (code, status, words)
        assert 400 <= status < 500 and words


def test_warn_and_block_thresholds():
    assert not blocks(probes_failed=2, block_after=3)
    assert blocks(probes_failed=3, block_after=3)
    assert warned(probes_failed=1, warn_after=1, blocked=False)
    assert not warned(probes_failed=0, warn_after=1, blocked=False)
    assert not warned(probes_failed=5, warn_after=1, blocked=True)


@pytest.mark.parametrize("kw, state", [
    ({}, "rating"),
    ({"needs_consent": True}, "consent"),
    ({"needs_consent": True, "consented": True}, "rating"),
    ({"blocked": True}, "blocked"),
    ({"excluded": True}, "finished"),
    ({"campaign_status": "paused"}, "paused"),
    ({"campaign_status": "draft"}, "paused"),
    ({"campaign_status": "closed"}, "finished"),
    ({"blocked": True, "needs_consent": True}, "consent"),
])
def test_serving_state(kw, state):
    args = {"rater_active": True, "needs_consent": False, "consented": False, "blocked": False,
            "excluded": False, "campaign_status": "active", **kw}
    assert serving_state(**args) == state


def test_a_switched_off_account_is_refused_rather_than_told_a_state():
    with pytest.raises(LeaseError) as exc:
        serving_state(rater_active=False, needs_consent=False, consented=False, blocked=False,
                      excluded=False, campaign_status="active")
    assert exc.value.code == "account_disabled"


def test_a_lease_lives_lease_seconds_from_its_last_heartbeat_but_no_longer_than_its_maximum_age():
    from datetime import UTC, datetime, timedelta

    granted = datetime(2026, 1, 1, tzinfo=UTC)
    expiry = [rules.lease_expiry(now=granted + timedelta(seconds=s), leased_at=granted,
                                 lease_seconds=90, max_age_s=600) for s in (0, 400, 590, 700)]
    assert [(e - granted).total_seconds() for e in expiry] == [90, 490, 600, 600]


@pytest.mark.parametrize("lapses, ago, left", [
    (3, 10, 0),  # under the limit
    (4, 10, 590),  # at it: ten minutes after the latest lapse
    (9, 10, 590),
    (4, 600, 0),  # the cool-down has passed
    (4, 0.5, 600),  # whole seconds, rounded up
])
def test_cool_down_after_repeated_lapses(lapses, ago, left):
    from datetime import UTC, datetime, timedelta

    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert rules.cool_down_left(lapses=lapses, lapsed_at=now - timedelta(seconds=ago), now=now,
                                limit=4, cool_down_s=600) == left
    # a limit of 0 switches it off
    assert rules.cool_down_left(lapses=lapses, lapsed_at=now, now=now, limit=0,
                                cool_down_s=600) == 0


@pytest.mark.parametrize("quota_left, open_items, cool_down, state", [
    (0, True, 0, "finished"),  # the quota is answered
    (5, False, 0, "finished"),  # nothing left that the rater has not answered
    (5, False, 300, "finished"),
    (5, True, 0, "waiting"),  # items left, all held by others
    (5, True, 300, "cool_down"),
])
def test_why_a_served_rater_holds_nothing(quota_left, open_items, cool_down, state):
    assert rules.idle_state(quota_left=quota_left, open_items=open_items,
                            cool_down_s=cool_down) == state


def test_the_completion_code_needs_an_answer():
    assert not rules.completion_earned(answered=0)
    assert rules.completion_earned(answered=1)
