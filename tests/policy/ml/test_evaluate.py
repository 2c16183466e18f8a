"""The evaluation report: every metric for every source, oracle optional."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from policy.ml import metrics as M
from policy.ml.errors import EmptySplitError, PolicyDataError
from policy.ml.evaluate import evaluate

METRICS = {"l2", "l2_expression", "l2_pose", "fd", "fd_expression", "fd_pose", "pfd", "variance",
           "si_div_expression", "si_div_pose", "frdiv", "frvar", "frsyn"}


def test_baselines_only_report_has_every_metric_and_a_perfect_ground_truth(episodes):
    report = evaluate(None, episodes[6:8], episodes[:6], layout="builtin",
                      oracle=lambda cand, ep: float(cand.mean()))
    assert set(report["sources"]) == {"ground_truth", "random_clip", "nearest_neighbour",
                                      "mirror", "mean_face"}
    for metrics in report["sources"].values():
        assert METRICS | {"oracle"} <= set(metrics)
    gt = report["sources"]["ground_truth"]
    assert gt["l2"] == 0.0 and gt["fd"] == pytest.approx(0.0, abs=1e-5)
    assert gt["variance"] == pytest.approx(report["ground_truth_variance"])
    assert report["sources"]["mean_face"]["variance"] == 0.0
    assert report["sources"]["mean_face"]["frdiv"] == 0.0


def test_policy_report_and_empty_test_split(tiny_result, episodes):
    report = evaluate(tiny_result.policy, episodes[6:8], episodes[:6], baselines=("mirror",))
    assert set(report["sources"]) == {"policy", "mirror"}
    assert set(report["sources"]["policy"]) >= METRICS
    assert "oracle" not in report["sources"]["policy"]
    with pytest.raises(EmptySplitError, match="test split"):
        evaluate(tiny_result.policy, [], episodes[:6])
    with pytest.raises(ValueError, match="layout"):
        evaluate(None, episodes[6:8], episodes[:6])


def test_ground_truth_metrics_are_measured_against_the_reference(episodes):
    # given: held-out episodes whose recorded listener is off the reference by a known amount
    test = [dataclasses.replace(e, reference=e.listener + 0.1) for e in episodes[6:8]]
    offset = float(np.mean([((t.reference - t.listener) ** 2).mean() for t in test]))
    # when
    report = evaluate(None, test, episodes[:6], layout="builtin", baselines=("ground_truth",))
    plain = evaluate(None, episodes[6:8], episodes[:6], layout="builtin",
                     baselines=("ground_truth",))
    # then: copying the recorded listener no longer scores a perfect L2 / FD
    gt = report["sources"]["ground_truth"]
    assert gt["l2"] == pytest.approx(offset, rel=1e-6) and gt["l2"] > 0.005
    assert gt["fd"] > 0.01 and gt["pfd"] > 0.01
    assert report["n_reference"] == 2 and plain["n_reference"] == 0
    assert plain["sources"]["ground_truth"]["l2"] == 0.0


def test_scores_against_the_reference_match_the_metrics(episodes):
    ep = dataclasses.replace(episodes[6], reference=episodes[6].listener[::-1].copy())
    report = evaluate(None, [ep], episodes[:6], layout="builtin", baselines=("ground_truth",))
    assert report["sources"]["ground_truth"]["l2"] == pytest.approx(M.l2(ep.listener,
                                                                         ep.reference))


def test_a_reference_of_the_wrong_shape_is_named(episodes):
    bad = dataclasses.replace(episodes[6], reference=episodes[6].listener[:-1])
    with pytest.raises(PolicyDataError, match="reference"):
        evaluate(None, [bad], episodes[:6], layout="builtin")
    nan = episodes[6].listener.copy()
    nan[3, 2] = np.nan
    with pytest.raises(PolicyDataError, match="NaN"):
        evaluate(None, [dataclasses.replace(episodes[6], reference=nan)], episodes[:6],
                 layout="builtin")
