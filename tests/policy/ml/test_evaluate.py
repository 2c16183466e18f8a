"""The evaluation report: every metric for every source, oracle optional."""

from __future__ import annotations

import pytest

from policy.ml.errors import EmptySplitError
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
