"""Quality control: figures, decisions (append-only, overrides), runs, the API and the page."""

from __future__ import annotations

import random
import uuid

import numpy as np
import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import Client
from django.urls import reverse
from scipy.stats import binomtest

from annotation.models import CRITERIA, Enrollment, Judgment
from annotation.roles import RESEARCHER, role_add
from annotation.services import scheduling
from annotation.services.judgments import judgment_submit
from annotation.services.scheduling import assignments_next
from annotation.simulation import Rater
from feedback import qc
from feedback.models import DecisionSource, QcDecision, QcRun
from feedback.services.qc import (
    QcError,
    latest_status,
    qc_override,
    qc_run_create,
    qc_run_execute,
    qc_runs_due,
    rater_table,
)
from feedback.tasks_qc import qc_run_task
from policy.models import JobStatus
from policy.oracle import EpisodeContext, wrong_response
from policy.services.candidates import candidate_store_array
from rendering import blobs
from tests.annotation.conftest import SOURCES, enrol, make_campaign, make_corpus

# --- helpers ---------------------------------------------------------------------------------


@pytest.fixture
def corpus(db):
    return make_corpus()


def _researcher(name: str):
    user = get_user_model().objects.create_user(name, password=f"pw-{name}-1234")
    role_add(user, RESEARCHER)
    return user


@pytest.fixture
def researcher(db):
    return _researcher("res")


@pytest.fixture
def small_thresholds(settings):
    """Rules that judge after a dozen answers (the small campaign has 18 items)."""
    settings.FEEDBACK_QC = {**settings.FEEDBACK_QC, "min_answers": 10, "min_regular": 5}


def answer(campaign, user, respond, limit: int = 10_000) -> int:
    """The rater answers through the rating services until nothing is served or ``limit``."""
    done = 0
    while done < limit:
        result = assignments_next(rater=user, campaign_slug=campaign.slug)
        if result.state != "rating" or not result.assignments:
            break
        token = str(result.assignments[0].token)
        judgment_submit(rater=user, token=token, **respond(token))
        done += 1
    return done


def contrarian(seed: int = 0):
    """Presses the side a careful rater would not (left when the careful one sees no
    difference): decisive, and always against the others."""
    careful = Rater("careful", random.Random(seed))

    def respond(token: str) -> dict:
        body = careful.answer(token)
        body["choice"] = {"left": "right", "right": "left"}.get(body["choice"], "left")
        return body

    return respond


def enrollment(campaign, user) -> Enrollment:
    return Enrollment.objects.get(campaign=campaign, rater=user)


def run_now(campaign) -> QcRun:
    run = qc_run_create(campaign=campaign, enqueue=False)
    done = qc_run_execute(run_id=run.pk)
    assert done is not None and done.status == JobStatus.SUCCEEDED, done and done.error
    return done


@pytest.fixture
def small(corpus, researcher, small_thresholds):
    """18 pairwise items, overlap 4: three careful raters answer all, a contrarian 12."""
    campaign = make_campaign(corpus, overlap=4, per_rater_limit=50, created_by=researcher)
    careful = enrol(campaign, 3)
    for i, user in enumerate(careful):
        answer(campaign, user, Rater("careful", random.Random(i)).answer)
    (bad,) = enrol(campaign, 1)
    assert answer(campaign, bad, contrarian(), limit=12) == 12
    return campaign, careful, bad


def client_for(user) -> Client:
    c = Client()
    c.force_login(user)
    return c


# --- raters sorted by their answers ----------------------------------------------------------


def test_simulated_raters_careful_trusted_left_biased_flagged_random_excluded(db, researcher,
                                                                             monkeypatch):
    # given: 20 episodes x 10 pairs, five raters through the rating path: three careful, one
    # pressing left 70 % of the time, one pressing keys at random (stopping at 150 answers).
    # The sides shown and the probes drawn are seeded, so the figures are the same every run
    # (they are estimates from ~200 answers: a reliability of 0 and one of 0.3 lie ~3 standard
    # errors from the exclusion threshold between them).
    monkeypatch.setattr(scheduling, "_rng", random.Random(7))
    with connection.cursor() as cursor:
        cursor.execute("SELECT setseed(0.5)")  # the database functions draw sides and probes
    dataset = make_corpus(episodes=20, seed=5)
    rng = np.random.default_rng(5)
    for ep in dataset.episodes.all():
        gt = blobs.load_array(ep.listener_sha)
        ctx = EpisodeContext.from_meta(ep.meta, fps=ep.fps, n_frames=ep.n_frames)
        for kind in ("valence_swap", "frozen"):
            candidate_store_array(episode=ep, baseline=kind,
                                  array=wrong_response(gt, ctx, kind, rng))
    sources = SOURCES + [{"kind": "baseline", "name": "valence_swap"},
                         {"kind": "baseline", "name": "frozen"}]
    campaign = make_campaign(dataset, slug="sim", sources=sources, overlap=5, target_items=200,
                             per_rater_limit=300, gold_rate=0.05, catch_rate=0.05,
                             repeat_rate=0.05, warn_after=1000, block_after=1000,
                             created_by=researcher)
    users = enrol(campaign, 5)
    kinds = ["careful", "careful", "careful", "left-biased", "random"]
    for i, (user, kind) in enumerate(zip(users, kinds)):
        limit = 150 if kind == "random" else 10_000
        answer(campaign, user, Rater(kind, random.Random(100 + i)).answer, limit=limit)

    # when
    run = run_now(campaign)

    # then
    table = {row["pseudonym"]: row for row in rater_table(campaign=campaign)}
    rows = [table[str(enrollment(campaign, u).pseudonym)] for u in users]
    by_kind = {k: [r for r, kk in zip(rows, kinds) if kk == k] for k in set(kinds)}
    for row in by_kind["careful"]:
        assert row["status"] == "trusted", row
        assert row["reliability"] > 0.8 and row["loo_agreement"] > 0.8
    (biased,) = by_kind["left-biased"]
    assert biased["status"] == "flagged", biased
    assert biased["side_p"] < 1e-3 and biased["left_share"] > 0.75
    (rand,) = by_kind["random"]
    assert rand["status"] == "excluded", rand
    assert rand["reliability"] < 0.15 and "reliability" in rand["reason"]
    # the decision holds the reason, the figures and the thresholds at that moment
    d = QcDecision.objects.get(enrollment__pseudonym=rand["pseudonym"])
    assert d.source == DecisionSource.AUTO and d.figures["n_judgments"] == 150
    assert d.thresholds["reliability_exclude"] == 0.15
    assert run.summary["statuses"] == {"trusted": 3, "flagged": 1, "excluded": 1}
    # the excluded rater is served nothing more, though items remain for them
    assert enrollment(campaign, users[4]).excluded
    assert assignments_next(rater=users[4], campaign_slug=campaign.slug).state == "finished"
    assert Judgment.objects.filter(rater=users[4]).count() == 150  # nothing deleted


def test_an_excluded_rater_gets_no_more_items(small):
    # given: a contrarian with 6 items still to answer
    campaign, careful, bad = small
    assert assignments_next(rater=bad, campaign_slug=campaign.slug).state == "rating"
    # when
    run_now(campaign)
    # then
    assert latest_status(enrollment_ids=[enrollment(campaign, bad).pk]) == {
        enrollment(campaign, bad).pk: "excluded"}
    assert assignments_next(rater=bad, campaign_slug=campaign.slug).state == "finished"
    assert {latest_status(enrollment_ids=[enrollment(campaign, u).pk])[
        enrollment(campaign, u).pk] for u in careful} == {"trusted"}


def test_decisions_are_append_only_and_a_second_run_writes_none(small):
    campaign, _, _ = small
    # given: a first run
    run_now(campaign)
    before = list(QcDecision.objects.order_by("id").values())
    assert len(before) == 4  # one per rater judged
    # when: another run over the same judgments
    second = run_now(campaign)
    # then: no row added, none changed
    assert list(QcDecision.objects.order_by("id").values()) == before
    assert second.summary["decisions_written"] == 0


def test_the_task_called_twice_leaves_the_same_state(small):
    campaign, _, _ = small
    run = qc_run_create(campaign=campaign, enqueue=False)

    def state():
        r = QcRun.objects.get(pk=run.pk)
        return (r.status, r.judgments_seen, r.summary["statuses"],
                list(QcDecision.objects.order_by("id").values_list("id", "status")),
                list(Enrollment.objects.order_by("id").values_list("excluded", flat=True)))

    qc_run_task(run.pk)
    first = state()
    qc_run_task(run.pk)  # a redelivery: the run is no longer queued

    assert first[0] == JobStatus.SUCCEEDED
    assert state() == first


def test_an_override_is_recorded_and_respected_until_cleared(small, researcher):
    campaign, _, bad = small
    e = enrollment(campaign, bad)
    run_now(campaign)
    assert latest_status(enrollment_ids=[e.pk])[e.pk] == "excluded"

    # when: a researcher takes the rater back, with a reason
    d = qc_override(enrollment=e, status="trusted", reason="checked: the clips were swapped",
                    user=researcher)
    # then: recorded, and the rater is served again
    assert (d.source, d.status, d.decided_by) == (DecisionSource.OVERRIDE, "trusted", researcher)
    assert "clips were swapped" in d.reason and d.figures["n_judgments"] == 12
    assert not enrollment(campaign, bad).excluded
    assert assignments_next(rater=bad, campaign_slug=campaign.slug).state == "rating"
    # and quality control does not decide over it
    rows = QcDecision.objects.count()
    run_now(campaign)
    assert QcDecision.objects.count() == rows
    assert latest_status(enrollment_ids=[e.pk])[e.pk] == "trusted"

    # an override needs a reason and a known status
    with pytest.raises(QcError, match="reason"):
        qc_override(enrollment=e, status="excluded", reason="  ", user=researcher)
    with pytest.raises(QcError, match="status"):
        qc_override(enrollment=e, status="banned", reason="no", user=researcher)

    # when: the override is cleared, the next run decides again
    cleared = qc_override(enrollment=e, status="auto", reason="back to the rules",
                          user=researcher)
    assert (cleared.source, cleared.status) == (DecisionSource.AUTO, "trusted")
    queued = QcRun.objects.get(campaign=campaign, status=JobStatus.QUEUED)
    qc_run_execute(run_id=queued.pk)
    assert latest_status(enrollment_ids=[e.pk])[e.pk] == "excluded"
    assert enrollment(campaign, bad).excluded
    with pytest.raises(QcError, match="no override"):
        qc_override(enrollment=e, status="auto", reason="again", user=researcher)


# --- figures ---------------------------------------------------------------------------------

# Krippendorff's published examples (the ``krippendorff`` package's documentation).
_NOMINAL = [[np.nan, np.nan, np.nan, np.nan, np.nan, 3, 4, 1, 2, 1, 1, 3, 3, np.nan, 3],
            [1, np.nan, 2, 1, 3, 3, 4, 3, np.nan, np.nan, np.nan, np.nan, np.nan, np.nan,
             np.nan],
            [np.nan, np.nan, 2, 1, 3, 4, 4, np.nan, 2, 1, 1, 3, 3, np.nan, 4]]
_ORDINAL = [[1, 2, 3, 3, 2, 1, 4, 1, 2, np.nan, np.nan, np.nan],
            [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, np.nan, 3],
            [np.nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, np.nan],
            [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, np.nan]]


def _counts(matrix, domain) -> np.ndarray:
    """(units, values) counts from a raters x units matrix, as the service builds them."""
    m = np.asarray(matrix, dtype=float)
    rater, unit = np.nonzero(np.isfinite(m))
    index = np.searchsorted(np.asarray(domain), m[rater, unit])
    return qc.value_counts(unit, index, m.shape[1], len(domain))


def test_krippendorff_alpha_is_nominal_or_ordinal_as_asked():
    import krippendorff

    nominal = qc.krippendorff_alpha(_counts(_NOMINAL, [1, 2, 3, 4]), level="nominal",
                                    domain=[1, 2, 3, 4])
    ordinal = qc.krippendorff_alpha(_counts(_ORDINAL, [1, 2, 3, 4, 5]), level="ordinal",
                                    domain=qc.SCORE_DOMAIN)
    assert nominal == pytest.approx(0.691358, abs=1e-6)
    assert nominal == pytest.approx(krippendorff.alpha(reliability_data=_NOMINAL,
                                                       level_of_measurement="nominal"))
    assert ordinal == pytest.approx(0.815, abs=1e-3)
    assert ordinal == pytest.approx(krippendorff.alpha(
        reliability_data=_ORDINAL, value_domain=[1, 2, 3, 4, 5], level_of_measurement="ordinal"))
    # the package's default (interval) gives another figure: the level is never left to it
    assert krippendorff.alpha(reliability_data=_NOMINAL) == pytest.approx(0.810845, abs=1e-6)
    with pytest.raises(TypeError):
        qc.krippendorff_alpha(_counts(_NOMINAL, [1, 2, 3, 4]), domain=[1, 2, 3, 4])
    assert qc.krippendorff_alpha(np.array([[1, 0, 0], [0, 1, 0]]), level="nominal",
                                 domain=range(3)) is None  # no unit with two answers


def test_a_runs_alpha_is_the_packages_nominal_alpha_of_its_judgments(small):
    import krippendorff

    campaign, _, _ = small
    run = run_now(campaign)
    rows = list(Judgment.objects.filter(campaign=campaign, probe="none")
                .values_list("rater_id", "item_id", "outcome"))
    raters = sorted({r for r, _, _ in rows})
    items = sorted({i for _, i, _ in rows})
    matrix = np.full((len(raters), len(items)), np.nan)
    label = {"a": 0, "b": 1, "tie": 2, "both_bad": 2}
    for r, i, o in rows:
        matrix[raters.index(r), items.index(i)] = label[o]
    expected = krippendorff.alpha(reliability_data=matrix, value_domain=[0, 1, 2],
                                  level_of_measurement="nominal")
    assert run.summary["campaign"]["alpha"]["nominal"] == pytest.approx(expected, abs=1e-4)


def test_group_scores_give_an_ordinal_alpha_and_implied_pairs(corpus, small_thresholds):
    import krippendorff

    # given: a group campaign (3 candidates per item), two careful raters
    campaign = make_campaign(corpus, slug="groups", protocol="group", group_size=3, overlap=2)
    users = enrol(campaign, 2)
    for i, user in enumerate(users):
        answer(campaign, user, Rater("careful", random.Random(i)).answer)
    # when
    run = run_now(campaign)
    # then: three pairs per answer, and the package's ordinal alpha over (item, slot, criterion)
    c = run.summary["campaign"]
    assert c["n_comparisons"] == 3 * Judgment.objects.filter(campaign=campaign).count()
    cells: dict[tuple, dict] = {}
    for rater_id, item_id, scores in Judgment.objects.filter(campaign=campaign).values_list(
            "rater_id", "item_id", "scores"):
        for slot, entry in enumerate(scores):
            for crit in CRITERIA:
                cells.setdefault((item_id, slot, crit), {})[rater_id] = entry[crit]
    matrix = np.array([[cell.get(u.pk, np.nan) for cell in cells.values()] for u in users],
                      dtype=float)
    expected = krippendorff.alpha(reliability_data=matrix, value_domain=[1, 2, 3, 4, 5],
                                  level_of_measurement="ordinal")
    assert c["alpha"]["ordinal"] == pytest.approx(expected, abs=1e-4)
    assert set(c["alpha"]["ordinal_by_criterion"]) == set(CRITERIA)
    assert {r["left_share"] for r in rater_table(campaign=campaign)} == {None}  # no sides


def test_preference_cycles_count_intransitive_triads():
    # episode 7: 10 > 11 > 12 > 10, a cycle; episode 8: 20 > 21 > 22 and 20 > 22, where the
    # two units comparing 20 and 22 are pooled (22 > 20 by 2, then 20 > 22 by 1: 20 wins)
    cands = np.array([[10, 11], [11, 12], [12, 10], [20, 21], [21, 22], [22, 20], [20, 22],
                      [21, 20]])
    counts = np.array([[3, 0, 0], [2, 1, 0], [2, 0, 1], [3, 0, 0], [2, 1, 0], [0, 2, 0],
                       [1, 2, 0], [1, 1, 1]])  # the last splits evenly: no edge of its own
    episode = np.array([7, 7, 7, 8, 8, 8, 8, 8])
    out = qc.preference_cycles(episode, cands, counts)
    assert (out["cycles"], out["triads"], out["episodes_with_cycles"]) == (1, 2, 1)
    assert out["worst_episodes"] == [[7, 1]] and out["cycle_share"] == 0.5


def test_side_bias_is_scipys_binomial_test():
    rater = np.array([0] * 20 + [1] * 10 + [2] * 3)
    choice = np.array([qc.LEFT] * 18 + [qc.RIGHT] * 2 + [qc.LEFT, qc.RIGHT] * 5
                      + [qc.TIE, qc.BOTH_BAD, qc.TIE])
    n, left, share, p = qc.side_bias(rater, choice, 3)
    assert list(n) == [20, 10, 0] and list(left) == [18, 5, 0]
    assert p[0] == pytest.approx(binomtest(18, 20, 0.5).pvalue) and p[1] == 1.0
    assert np.isnan(p[2]) and np.isnan(share[2])
    # the closed form is scipy's test for every count
    ks, ns = zip(*[(k, n) for n in (*range(1, 41), 333) for k in range(0, n + 1, 1 + n // 40)])
    rater = np.repeat(np.arange(len(ks)), ns)
    choice = np.concatenate([[qc.LEFT] * k + [qc.RIGHT] * (n - k) for k, n in zip(ks, ns)])
    p = qc.side_bias(rater, choice, len(ks))[3]
    expected = [binomtest(k, n, 0.5).pvalue for k, n in zip(ks, ns)]
    assert p == pytest.approx(expected, rel=1e-9, abs=1e-300)
    lo, hi = qc.binomial_band(np.array([20]), 0.001)
    assert 0 < lo[0] < 0.5 < hi[0] < 1


def test_leave_one_out_agreement_needs_two_others_and_a_unique_majority():
    # unit 0: a a a b; unit 1: a b (one other answer: not scored); unit 2: a b tie tie (the
    # ties' others split a / b / tie: no majority)
    rater = np.array([0, 1, 2, 3, 0, 1, 0, 1, 2, 3])
    unit = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
    label = np.array([0, 0, 0, 1, 0, 1, 0, 1, 2, 2])
    counts = qc.unit_counts(unit, label, 3)
    scored, agreed = qc.loo_agreement(rater, unit, label, counts, 4)
    assert list(scored) == [2, 2, 1, 1] and list(agreed) == [1, 1, 1, 0]


def test_the_reliability_em_tells_careful_from_random_and_one_sided_raters():
    # given: 400 items, six careful raters (right 90 %), one random, one always "a"
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, 400)
    rater, unit, label = [], [], []
    for r in range(8):
        mine = np.arange(400)
        if r < 6:
            lab = np.where(rng.random(400) < 0.9, truth, rng.integers(0, 3, 400))
        elif r == 6:
            lab = rng.integers(0, 3, 400)
        else:
            lab = np.zeros(400, dtype=int)
        rater.append(np.full(400, r)), unit.append(mine), label.append(lab)
    rater, unit, label = (np.concatenate(x) for x in (rater, unit, label))
    # when
    theta, post, iters = qc.reliability_em(rater, unit, label, n_raters=9, n_units=400)
    # then
    assert (theta[:6] > 0.8).all() and theta[6] < 0.1 and theta[7] < 0.1
    assert np.isnan(theta[8])  # no answers
    assert (post.argmax(1) == truth).mean() > 0.98 and iters >= 1


def test_decision_speed_against_the_clip():
    rater = np.array([0, 0, 0, 0, 1, 1])
    decision = np.array([100.0, 200.0, 5000.0, 8000.0, 50.0, 60.0])
    clip = np.array([10_000.0] * 5 + [np.nan])
    out = qc.decision_speed(rater, decision, clip, 0.1, 2)
    assert list(out["timed_n"]) == [4, 1] and list(out["fast_share"]) == [0.5, 1.0]
    assert out["time_ratio_p50"][0] == pytest.approx(0.02)


def test_rules_in_words():
    th = qc.Thresholds()
    base = {**qc.empty_row(), "n_judgments": 100}
    assert qc.rater_decision({**base, "n_judgments": 19}, th)[0] is None
    assert qc.rater_decision(base, th)[0] == "trusted"
    status, reason = qc.rater_decision({**base, "gold_n": 10, "gold_passed": 6,
                                        "gold_accuracy": 0.6}, th)
    assert status == "excluded" and "gold accuracy 0.60 over 10 gold items" in reason
    status, reason = qc.rater_decision({**base, "decisive_n": 60, "left_share": 0.9,
                                        "side_p": 1e-9}, th)
    assert status == "flagged" and "pressed left in 90% of 60" in reason
    assert qc.rater_decision({**base, "decisive_n": 60, "left_share": 0.75,
                              "side_p": 1e-5}, th)[0] == "trusted"  # biased, but not enough
    assert qc.rater_decision({**base, "timed_n": 100, "fast_share": 0.5}, th)[0] == "flagged"


def test_thresholds_come_from_settings_and_bad_ones_are_named(settings):
    assert qc.Thresholds.from_mapping(settings.FEEDBACK_QC) == qc.Thresholds()
    with pytest.raises(ValueError, match="unknown key 'gold'"):
        qc.Thresholds.from_mapping({"gold": 0.7})
    with pytest.raises(ValueError, match="min_gold"):
        qc.Thresholds.from_mapping({"min_gold": 2.5})
    with pytest.raises(ValueError, match="share"):
        qc.Thresholds.from_mapping({"side_bias_share": 80})


# --- runs ------------------------------------------------------------------------------------


def test_the_beat_queues_a_run_after_a_batch_of_new_judgments(small, settings):
    campaign, careful, _ = small
    n = Judgment.objects.filter(campaign=campaign).count()
    settings.FEEDBACK_QC = {**settings.FEEDBACK_QC, "batch": n}
    # when: a batch of judgments is there
    (run,) = qc_runs_due()
    # then: one run, and no second while it is queued
    assert run.campaign_id == campaign.pk and run.status == JobStatus.QUEUED
    assert qc_runs_due() == []
    qc_run_execute(run_id=run.pk)
    assert qc_runs_due() == []  # nothing new since
    settings.FEEDBACK_QC = {**settings.FEEDBACK_QC, "batch": 1}
    (late,) = enrol(campaign, 1)
    answer(campaign, late, Rater("careful", random.Random(9)).answer, limit=1)
    assert len(qc_runs_due()) == 1


def test_run_qc_command_prints_the_rater_table(small, capsys):
    campaign, _, bad = small
    call_command("run_qc", "--campaign", campaign.slug)
    out = capsys.readouterr().out
    assert "decisions written" in out and "excluded" in out
    assert str(enrollment(campaign, bad).pseudonym)[:8] in out
    with pytest.raises(CommandError, match="no campaign"):
        call_command("run_qc", "--campaign", "nope")


# --- API and page ----------------------------------------------------------------------------


def test_the_api_is_for_researchers_of_the_campaign(small, researcher):
    campaign, careful, bad = small
    other = _researcher("other")
    url = reverse("feedback:api-qc", args=[campaign.slug])
    pseudonym = enrollment(campaign, bad).pseudonym
    status_url = reverse("feedback:api-rater-status", args=[campaign.slug, pseudonym])
    # raters: 403; another researcher: 404
    assert client_for(careful[0]).post(url).status_code == 403
    assert client_for(careful[0]).get(url).status_code == 403
    assert client_for(careful[0]).post(status_url, {"status": "trusted", "reason": "x"},
                                       content_type="application/json").status_code == 403
    assert client_for(other).post(url).status_code == 404
    assert client_for(other).get(url).status_code == 404
    assert client_for(other).post(status_url, {"status": "trusted", "reason": "x"},
                                  content_type="application/json").status_code == 404
    assert not QcRun.objects.exists()

    c = client_for(researcher)
    # POST queues a run (the one already queued, when asked twice)
    res = c.post(url)
    assert res.status_code == 202
    assert c.post(url).json()["run"] == res.json()["run"]
    qc_run_execute(run_id=res.json()["run"])
    body = c.get(url).json()
    assert body["run"]["id"] == res.json()["run"] and body["run"]["status"] == "succeeded"
    assert body["run"]["campaign"]["alpha"]["nominal"] is not None
    rows = {r["pseudonym"]: r for r in body["raters"]}
    assert len(rows) == 4 and rows[str(pseudonym)]["status"] == "excluded"
    assert {"gold_accuracy", "reliability", "loo_agreement", "side_p", "fast_share",
            "source", "reason", "n_judgments"} <= set(rows[str(pseudonym)])

    # an override with its reason
    res = c.post(status_url, {"status": "flagged", "reason": "looked at it"},
                 content_type="application/json")
    assert res.status_code == 201 and res.json()["source"] == "override"
    assert c.post(status_url, {"status": "flagged"},
                  content_type="application/json").json()["field"] == "reason"
    unknown = reverse("feedback:api-rater-status", args=[campaign.slug, uuid.uuid4()])
    assert c.post(unknown, {"status": "trusted", "reason": "x"},
                  content_type="application/json").status_code == 404
    assert c.get(url).json()["raters"][-1]["status"] == "flagged"


def test_the_quality_page(small, researcher):
    campaign, careful, bad = small
    url = reverse("feedback:quality", args=[campaign.slug])
    assert Client().get(url).status_code == 302
    assert client_for(careful[0]).get(url).status_code == 403
    assert client_for(_researcher("other")).get(url).status_code == 404
    c = client_for(researcher)
    # a run queued: the page shows its progress
    assert c.post(url, {"action": "run"}).status_code == 302
    page = c.get(url).content.decode()
    assert 'id="qc-progress"' in page and "reloads itself" in page
    qc_run_execute(run_id=QcRun.objects.get().pk)
    page = c.get(url).content.decode()
    assert "human ceiling" in page and page.count("<svg") >= 3
    assert "Share of left per rater" in page and "Decision time" in page
    assert str(enrollment(campaign, bad).pseudonym) in page and 'id="qc-progress"' not in page
    # the override form
    res = c.post(url, {"action": "override", "status": "trusted", "reason": "reviewed",
                       "pseudonym": str(enrollment(campaign, bad).pseudonym)})
    assert res.status_code == 302
    assert QcDecision.objects.filter(source="override", decided_by=researcher).count() == 1
