"""Retraining rounds on a tiny policy (CPU): the steps in process and through a real Celery
worker, a worker killed during optimisation, refusals, promotion and rollback, the pages and the
API."""

from __future__ import annotations

import os
import signal
import time
from datetime import timedelta
from unittest.mock import patch

import numpy as np
import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from annotation.roles import ADMIN, role_add
from config.celery import app as celery_app
from feedback.models import (
    ROUND_STEPS,
    Promotion,
    Round,
    RoundSchedule,
    RoundStatus,
    RoundStep,
    StepState,
)
from feedback.services.rounds import (
    RoundError,
    round_cancel,
    round_config_clean,
    round_folder,
    round_reap_stale,
    round_run_here,
    round_start,
    rounds_due,
    version_promote,
    version_rollback,
)
from policy.models import Candidate, PolicyVersion, VersionStatus
from policy.services.candidates import candidate_store_array, candidates_generate
from tests.annotation.conftest import enrol, make_campaign
from tests.conftest import require_real_services
from tests.feedback.test_snapshots import answer_all
from tests.policy.conftest import TINY, tiny_checkpoint  # noqa: F401
from tests.workers import start_worker, stop, worker_env

# Small enough for two CPU cores: every step a few seconds.
TINY_ROUND = {
    "min_pairs": 5,
    "test_fraction": 0.2,
    "critic": {"d_model": 16, "n_layers": 1, "n_heads": 2, "members": 4, "epochs": 2.0,
               "batch_size": 8, "log_every": 1},
    "optimise": {"max_steps": 4, "batch_size": 4, "val_every": 2, "val_k": 1,
                 "checkpoint_every": 1, "chance_alpha": 0.0},  # too few held-out pairs to test
    "val_episodes": 2,
    "eval_episodes": 3,
    "eval_k": 2,
    "next_campaign": {"limit": 3, "samples": 1, "parent_samples": 1},
}


def _version(dataset, checkpoint: bytes, name: str = "tiny") -> PolicyVersion:
    from policy.ml.checkpoint import load_checkpoint
    from rendering import blobs

    sha, _ = blobs.put_blob(checkpoint, "pt")
    tok = load_checkpoint(blobs.default_storage.path(blobs.blob_name(sha, "pt"))).tokenizer
    return PolicyVersion.objects.create(
        name=name, checkpoint_sha=sha, config=TINY, dataset=dataset,
        tokenizer={"layout": tok.layout, "n_bins": tok.n_bins,
                   "fingerprint": tok.fingerprint()})


@pytest.fixture
def loop(db, tiny_checkpoint):  # noqa: F811
    """A promoted tiny version, a campaign over its samples and the ground truth, answered."""
    from policy.oracle import EpisodeContext, wrong_response
    from policy.services.synthetic import synthetic_corpus_create
    from rendering import blobs

    dataset = synthetic_corpus_create(episodes=24, seed=5, name="syn").dataset
    parent = _version(dataset, tiny_checkpoint)
    version_promote(version=parent)
    episodes = list(dataset.episodes.filter(split="train").order_by("key")[:8])
    candidates_generate(version=parent, episodes=episodes, k=2, ground_truth=True)
    rng = np.random.default_rng(0)
    for ep in episodes:  # a clearly wrong answer, so some judgments have a right side
        ctx = EpisodeContext.from_meta(ep.meta, fps=ep.fps, n_frames=ep.n_frames)
        candidate_store_array(episode=ep, baseline="frozen", array=wrong_response(
            blobs.load_array(ep.listener_sha), ctx, "frozen", rng))
    campaign = make_campaign(dataset, sources=[
        {"kind": "policy", "version": parent.name, "samples": 2}, {"kind": "ground_truth"},
        {"kind": "baseline", "name": "frozen"}], episodes=episodes, overlap=2,
        reason_tags=["timing"])
    raters = enrol(campaign, 3)
    assert answer_all(campaign, raters) >= 20
    return dataset, parent, campaign


def _run(rnd: Round) -> Round:
    return round_run_here(rnd.pk)


# --- configuration and refusals -------------------------------------------------------------------


@pytest.mark.parametrize("given, words", [
    ({"methd": "dpo"}, "methd is not a round setting"),
    ({"method": "ppo"}, "method must be one of"),
    ({"min_pairs": 0}, "min_pairs must be an integer"),
    ({"gates": {"max_l2_ratio": "x"}}, "gates.max_l2_ratio"),
    ({"gates": 3}, "gates must be an object"),
    ({"optimise": {"method": "dpo"}}, "optimise.method is set by the round"),
    ({"next_campaign": {"split": "everything"}}, "next_campaign.split"),
    ({"eval_k": float("nan")}, "eval_k"),
])
def test_a_bad_config_is_refused_naming_the_setting(given, words):
    with pytest.raises(RoundError, match=words):
        round_config_clean(given)


def test_defaults_fill_what_is_not_given():
    cfg = round_config_clean({"method": "dpo", "gates": {"max_fd_ratio": 1.2}})
    assert cfg["method"] == "dpo" and cfg["gates"]["max_fd_ratio"] == 1.2
    assert cfg["gates"]["max_l2_ratio"] == 1.10 and cfg["min_pairs"] == 50


def test_a_round_needs_a_promoted_version_and_one_open_round_per_lineage(loop):
    dataset, parent, campaign = loop
    PolicyVersion.objects.filter(pk=parent.pk).update(status=VersionStatus.CANDIDATE)
    with pytest.raises(RoundError, match="no promoted version"):
        round_start(campaigns=[campaign], enqueue=False)
    assert not Round.objects.exists()
    PolicyVersion.objects.filter(pk=parent.pk).update(status=VersionStatus.PROMOTED)
    first = round_start(campaigns=[campaign], enqueue=False, config=TINY_ROUND)
    with pytest.raises(RoundError, match=f"round open already \\(#{first.pk}\\)"):
        round_start(campaigns=[campaign], enqueue=False)
    round_cancel(rnd=first)
    assert round_start(campaigns=[campaign], enqueue=False).pk != first.pk


def test_a_snapshot_with_too_few_pairs_is_refused_saying_how_many_it_needs(loop):
    _, _, campaign = loop
    rnd = _run(round_start(campaigns=[campaign], enqueue=False,
                           config={**TINY_ROUND, "min_pairs": 100_000}))
    assert rnd.status == RoundStatus.FAILED and rnd.step == RoundStep.SNAPSHOT
    assert "a round needs at least 100000" in rnd.error
    assert "decided pairs" in rnd.error
    assert PolicyVersion.objects.count() == 1


# --- a whole round ------------------------------------------------------------------------------


def test_a_round_registers_one_version_waits_then_promotes_samples_and_rolls_back(
        loop, client, admin_user):
    dataset, parent, campaign = loop
    rnd = _run(round_start(campaigns=[campaign], enqueue=False, config=TINY_ROUND))
    assert rnd.status == RoundStatus.WAITING, rnd.log + rnd.error
    new = PolicyVersion.objects.exclude(pk=parent.pk).get()  # exactly one version
    assert rnd.output_version == new and new.status == VersionStatus.CANDIDATE
    assert new.parent == parent and new.lineage == parent.lineage
    assert new.training_data["snapshot"] == rnd.snapshot.content_hash
    assert new.training_data["critic_sha256"] == rnd.critic_sha and len(rnd.critic_sha) == 64
    assert new.checkpoint_sha == rnd.checkpoint_sha != parent.checkpoint_sha
    for step in ROUND_STEPS[:-1]:  # every step but the candidates ran once, and took time
        assert rnd.steps[step]["attempts"] == 1 and rnd.steps[step]["seconds"] >= 0, step
    report = rnd.report
    assert report["snapshot"]["pairs_train"] >= TINY_ROUND["min_pairs"]
    assert report["critic"]["heldout"] and "human" in report["critic"]
    ev = report["evaluation"]
    assert 1 <= ev["n_episodes"] <= 3 and 0.0 <= ev["critic_win_rate"] <= 1.0
    assert 0.0 <= ev["oracle_win_rate"] <= 1.0 and ev["l2_ratio"] > 0
    assert set(ev["gates"]["rows"]) == {"oracle_win_rate", "critic_win_rate", "l2_ratio",
                                        "fd_ratio"}
    assert rnd.curves["critic_loss"] and rnd.curves["optimise_loss"]
    assert (round_folder(rnd.pk) / "critic.pt").exists()
    # the admin's pages show it, and compare the two versions
    client.force_login(admin_user)
    page = client.get(f"/rounds/{rnd.pk}/").content.decode()
    for words in ("waiting", "critic", "human agreement", "oracle win-rate",
                  f"Promote {new.name}", "<svg", "optimise"):
        assert words in page, words
    compare = client.get(f"/versions/compare/?a={parent.name}&b={new.name}").content.decode()
    assert f'round <a href="/rounds/{rnd.pk}/">' in compare and "oracle" in compare
    assert f"?version={new.name}" in client.get("/lineages/main/").content.decode()
    # when: the admin promotes it (the page's button; the steps then run here)
    with patch("feedback.services.rounds.lifecycle.enqueue_step") as sent:
        assert client.post(f"/rounds/{rnd.pk}/action/", {"action": "promote"}).status_code == 302
    assert sent.call_args.args == (rnd.pk, RoundStep.CANDIDATES)
    rnd = _run(rnd)
    # then: the new version serves, the parent is retired, the next campaign samples both
    assert rnd.status == RoundStatus.SUCCEEDED and rnd.progress == 100.0, rnd.error
    new.refresh_from_db()
    parent.refresh_from_db()
    assert (new.status, parent.status) == (VersionStatus.PROMOTED, VersionStatus.RETIRED)
    nxt = rnd.next_campaign
    assert nxt is not None and nxt.status == "draft" and nxt.items.exists()
    n_test = min(3, dataset.episodes.filter(split="test").count())
    assert Candidate.objects.filter(policy_version=new).count() == n_test  # x 1 sample each
    assert {s.get("version") for s in nxt.sources if s["kind"] == "policy"} == {
        new.name, parent.name}
    promoted = Promotion.objects.get(round=rnd)
    assert (promoted.version, promoted.previous, promoted.round) == (new, parent, rnd)
    assert promoted.by == admin_user
    # when: rolled back
    version_rollback(lineage=parent.lineage)
    new.refresh_from_db()
    parent.refresh_from_db()
    assert (new.status, parent.status) == (VersionStatus.RETIRED, VersionStatus.PROMOTED)
    assert list(Promotion.objects.order_by("pk").values_list("action", flat=True)) == [
        "promote", "promote", "rollback"]  # the fixture's, the round's, the rollback
    with pytest.raises(RoundError, match="no earlier promoted version"):
        version_rollback(lineage=parent.lineage)


def test_a_failed_gate_leaves_the_round_waiting_for_a_person(loop):
    from feedback.services.rounds.runner import StepContext
    from feedback.services.rounds.steps import gates_check, step_promote

    _, parent, campaign = loop
    gates = round_config_clean({})["gates"]
    result = {"oracle_win_rate": 0.7, "critic_win_rate": 0.9, "l2_ratio": 1.2, "fd_ratio": 1.0}
    checked = gates_check(result, gates)
    assert not checked["passed"] and not checked["rows"]["l2_ratio"]["passed"]
    assert checked["rows"]["oracle_win_rate"]["passed"]
    assert gates_check({"critic_win_rate": 0.9, "l2_ratio": 1.0, "fd_ratio": 1.0},
                       gates)["passed"]  # no oracle on a real corpus: that gate is left out
    rnd = round_start(campaigns=[campaign], enqueue=False, config={"auto_promote": True})
    other = PolicyVersion.objects.create(name="tiny-r9", checkpoint_sha="9" * 64, config={},
                                         tokenizer={}, dataset=parent.dataset, parent=parent)
    Round.objects.filter(pk=rnd.pk).update(
        output_version=other, step=RoundStep.PROMOTE, step_state=StepState.RUNNING,
        status=RoundStatus.RUNNING, report={"evaluation": {"gates": checked}})
    rnd.refresh_from_db()
    step_promote(rnd, StepContext(rnd, RoundStep.PROMOTE))
    rnd.refresh_from_db()
    assert rnd.status == RoundStatus.WAITING and "a gate did not pass: l2_ratio" in rnd.log
    assert PolicyVersion.objects.get(pk=parent.pk).status == VersionStatus.PROMOTED


def test_a_cancelled_round_runs_nothing_more(loop):
    _, _, campaign = loop
    rnd = round_start(campaigns=[campaign], enqueue=False, config=TINY_ROUND)
    round_cancel(rnd=rnd)
    rnd = _run(rnd)
    assert rnd.status == RoundStatus.CANCELLED and rnd.snapshot is None
    with pytest.raises(RoundError, match="nothing to cancel"):
        round_cancel(rnd=rnd)


def test_a_step_cancelled_while_it_runs_stops_at_its_next_report(loop, monkeypatch):
    from feedback.services.rounds import runner

    _, _, campaign = loop
    rnd = round_start(campaigns=[campaign], enqueue=False, config=TINY_ROUND)
    real = runner.StepContext.progress

    def cancel_then_report(self, *args, **kwargs):
        Round.objects.filter(pk=self.round.pk).update(cancel_requested=True)
        return real(self, *args, force=True, **{k: v for k, v in kwargs.items()
                                                 if k != "force"})

    monkeypatch.setattr(runner.StepContext, "progress", cancel_then_report)
    rnd = _run(rnd)
    assert rnd.status == RoundStatus.CANCELLED and rnd.output_version is None
    assert "cancelled" in rnd.log


def test_a_step_whose_worker_went_silent_is_queued_again_once(
        loop, django_capture_on_commit_callbacks):
    _, _, campaign = loop
    rnd = round_start(campaigns=[campaign], enqueue=False, config=TINY_ROUND)
    Round.objects.filter(pk=rnd.pk).update(step_state=StepState.RUNNING,
                                           status=RoundStatus.RUNNING,
                                           heartbeat_at=rnd.created_at)
    with django_capture_on_commit_callbacks(execute=False) as sent:
        assert round_reap_stale(older_than=timedelta(0)) == 1
        assert round_reap_stale(older_than=timedelta(0)) == 0  # queued now, not running
    assert len(sent) == 1
    rnd.refresh_from_db()
    assert rnd.step_state == StepState.QUEUED and "stopped answering" in rnd.log


def test_the_schedule_starts_a_round_once_enough_new_trusted_judgments_came(loop):
    _, _, campaign = loop
    RoundSchedule.objects.create(campaign=campaign, every_judgments=10_000, config=TINY_ROUND)
    assert rounds_due() == []
    RoundSchedule.objects.filter(campaign=campaign).update(every_judgments=5)
    started = rounds_due()
    assert len(started) == 1 and started[0].trigger == "schedule"
    assert started[0].judgments_at_start >= 20
    assert rounds_due() == []  # one open round per lineage


def test_the_command_runs_a_round_here_and_promotes_itself_when_the_gates_pass(
        loop, capsys):
    import json

    _, parent, campaign = loop
    config = {**TINY_ROUND, "auto_promote": True, "next_campaign": {"create": False},
              "gates": {"min_oracle_win_rate": 0.0, "min_critic_win_rate": 0.0,
                        "max_l2_ratio": 100.0, "max_fd_ratio": 100.0}}
    call_command("start_round", campaign=[campaign.slug], here=True, no_progress=True,
                 config=json.dumps(config))
    out = capsys.readouterr().out
    rnd = Round.objects.get()
    assert rnd.status == RoundStatus.SUCCEEDED and rnd.trigger == "command", rnd.error
    assert f"/rounds/{rnd.pk}/" in out and rnd.output_version.name in out
    assert rnd.output_version.status == VersionStatus.PROMOTED
    assert Promotion.objects.get(round=rnd).automatic is True
    assert rnd.next_campaign is None


# --- pages and API ------------------------------------------------------------------------------


@pytest.fixture
def admin_user(db):
    user = get_user_model().objects.create_user("boss", password="pw-boss-1234")
    role_add(user, ADMIN)
    return user


def test_only_admins_see_rounds(loop, client, researcher, admin_user):
    _, _, campaign = loop
    for path in ("/rounds/", "/api/rounds/", "/versions/compare/", "/lineages/main/"):
        client.force_login(researcher)
        assert client.get(path).status_code == 403, path
        client.force_login(admin_user)
        assert client.get(path).status_code == 200, path
    client.logout()
    assert client.get("/api/rounds/").status_code == 403
    assert client.get("/rounds/").status_code == 302


def test_the_api_starts_follows_and_acts_on_a_round(loop, client, admin_user,
                                                   django_capture_on_commit_callbacks):
    _, parent, campaign = loop
    client.force_login(admin_user)
    with django_capture_on_commit_callbacks(execute=False) as sent:
        reply = client.post("/api/rounds/", {"campaigns": [campaign.slug],
                                             "config": TINY_ROUND},
                            content_type="application/json")
    assert reply.status_code == 202, reply.content
    body = reply.json()
    assert body["parent"] == parent.name and body["step"] == "snapshot" and len(sent) == 1
    bad = client.post("/api/rounds/", {"campaigns": [campaign.slug], "config": {"x": 1}},
                      content_type="application/json")
    assert bad.status_code == 400 and "x is not a round setting" in bad.json()["detail"]
    again = client.post("/api/rounds/", {"campaigns": [campaign.slug]},
                        content_type="application/json")
    assert again.status_code == 409 and "open already" in again.json()["detail"]
    detail = client.get(body["url"]).json()
    assert detail["status"] == "queued" and "started by api" in detail["log"]
    wrong = client.post(f"{body['url']}action/", {"action": "promote"},
                        content_type="application/json")
    assert wrong.status_code == 409 and "not waiting" in wrong.json()["detail"]
    done = client.post(f"{body['url']}action/", {"action": "cancel"},
                       content_type="application/json")
    assert done.status_code == 200 and done.json()["status"] == "cancelled"
    assert client.post("/api/lineages/main/rollback/").status_code == 409


def test_the_admin_action_asks_before_it_starts_a_round(loop, client, admin_user):
    _, _, campaign = loop
    admin_user.is_staff = admin_user.is_superuser = True
    admin_user.save()
    client.force_login(admin_user)
    url = "/admin/annotation/campaign/"
    ask = client.post(url, {"action": "start_round", "_selected_action": [campaign.pk]})
    assert ask.status_code == 200 and b"Yes, start the round" in ask.content
    assert not Round.objects.exists()
    client.post(url, {"action": "start_round", "_selected_action": [campaign.pk],
                      "confirm": "yes"})
    assert Round.objects.get().trigger == "admin"


# --- a real worker, killed during optimisation --------------------------------------------


def _wait(pred, timeout: float, worker=None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        if worker is not None and worker.poll() is not None:
            return False
        time.sleep(0.1)
    return False


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_during_optimisation_resumes_and_registers_one_version(
        loop, settings):
    require_real_services()
    _, parent, campaign = loop
    with celery_app.connection_for_write() as conn:
        for q in ("default", "gpu"):
            conn.default_channel.queue_purge(q)
    env = worker_env(dict(os.environ))
    config = {**TINY_ROUND, "optimise": {**TINY_ROUND["optimise"], "max_steps": 60,
                                         "val_every": 30}}
    worker = start_worker("default,gpu", env)
    try:
        rnd = round_start(campaigns=[campaign], config=config)  # autocommit: sent at once
        ckpt = round_folder(rnd.pk) / "optimise.pt"
        assert _wait(ckpt.exists, 240, worker), stop(worker)[-3000:]
        os.kill(worker.pid, signal.SIGKILL)  # mid-optimisation, no goodbye
        worker.wait(30)
        rnd.refresh_from_db()
        assert (rnd.step, rnd.step_state) == (RoundStep.OPTIMISE, StepState.RUNNING)
        assert round_reap_stale(older_than=timedelta(0)) == 1
        worker = start_worker("default,gpu", env)

        def waiting() -> bool:
            rnd.refresh_from_db()
            return rnd.status in (RoundStatus.WAITING, RoundStatus.FAILED)

        assert _wait(waiting, 300, worker), stop(worker)[-3000:]
    finally:
        output = stop(worker)
    assert rnd.status == RoundStatus.WAITING, rnd.error + output[-3000:]
    assert rnd.steps["optimise"]["attempts"] == 2
    assert "attempt 2, resuming" in rnd.log
    assert PolicyVersion.objects.exclude(pk=parent.pk).count() == 1
    assert "feedback.tasks_rounds.round_step_task" in output


def test_the_promote_command_promotes_once_and_rolls_back(loop, capsys):
    _, parent, _ = loop
    call_command("promote_version", name=parent.name, if_none=True)
    assert "is promoted already" in capsys.readouterr().out
    other = PolicyVersion.objects.create(name="tiny-b", checkpoint_sha="b" * 64, config={},
                                         tokenizer={}, dataset=parent.dataset)
    call_command("promote_version", name="tiny-b")
    assert PolicyVersion.objects.get(pk=other.pk).status == VersionStatus.PROMOTED
    call_command("promote_version", rollback=True, lineage="main")
    assert PolicyVersion.objects.get(pk=parent.pk).status == VersionStatus.PROMOTED
    assert "tiny promoted again" in capsys.readouterr().out
