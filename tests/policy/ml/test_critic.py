"""The critic: the Davidson loss, human agreement, an ensemble that learns which listener people
prefer, its file, and a resumed run that ends where an uninterrupted one does."""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from policy.ml.checkpoint import file_sha256, save_checkpoint
from policy.ml.critic import (
    OUTCOME_CODE,
    Critic,
    CriticConfig,
    CriticEnsemble,
    _resample,
    ceiling_check,
    davidson_nll,
    ensemble_reward,
    human_agreement,
    train_critic,
)
from policy.ml.data import EpisodeData, episode_from
from policy.ml.errors import CheckpointError
from policy.ml.prefdata import HEADS, Comparison
from policy.ml.train import TrainResult
from policy.oracle import EpisodeContext, wrong_response
from policy.synthetic import generate_corpus

# Small enough for two CPU cores: one block over 8-frame tokens.
FAST = CriticConfig(d_model=16, n_layers=1, n_heads=2, frame_stride=8, members=2, max_steps=4,
                    batch_size=4, dropout=0.0, device="cpu", log_every=2)
OVERALL = HEADS.index("overall")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One thread: these tiny batches gain nothing from a second (and lose much when the cores
    are shared), and the trained critics then do not depend on the machine's core count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def parts(result: TrainResult) -> dict:
    """What the critic takes of the policy it judges for."""
    policy = result.policy
    return {"model_config": policy.cfg, "tokenizer": policy.tokenizer,
            "input_stats": policy.model.input_stats()}


def corrupted(eps: list[EpisodeData], split: str, seed: int = 0,
              kinds: tuple[str, ...] = ("frozen", "jitter")) -> list[Comparison]:
    """The ground truth preferred over each corruption, once with it shown first, once second."""
    rng = np.random.default_rng(seed)
    out = []
    for ep in eps:
        ctx = EpisodeContext.from_meta(ep.meta, fps=ep.fps, n_frames=ep.n_frames)
        for kind in kinds:
            for first in (True, False):
                bad = wrong_response(ep.listener, ctx, kind, rng)
                a, b = (ep.listener, bad) if first else (bad, ep.listener)
                out.append(Comparison(episode=ep.key, a=a, b=b, outcome="a" if first else "b",
                                      strength=2, split=split, item=f"{ep.key}:{kind}",
                                      rater="sim"))
    return out


def pair_accuracy(ens: CriticEnsemble, comps: list[Comparison], eps: dict) -> float:
    prepared = {p.key: p for p in ens.prepare(eps[k] for k in sorted({c.episode for c in comps}))}
    rows = [prepared[c.episode] for c in comps]
    mean_a, _ = ens.score(rows, [c.a for c in comps])
    mean_b, _ = ens.score(rows, [c.b for c in comps])
    right = [(mean_a[i, OVERALL] > mean_b[i, OVERALL]) == (c.outcome == "a")
             for i, c in enumerate(comps)]
    return float(np.mean(right))


# --- the loss ------------------------------------------------------------------------------------


def nll(r_a: float, r_b: float, outcome: str, strength: int = 1, nu: float = 0.5,
        margin: float = 0.5) -> float:
    return float(davidson_nll(torch.tensor([r_a]), torch.tensor([r_b]),
                              torch.tensor([OUTCOME_CODE[outcome]]), torch.tensor([strength]),
                              torch.tensor([math.log(nu)]), margin)[0])


def test_the_davidson_loss_matches_hand_computed_values():
    # a wins by 1, nu = 0.5: P = 1 / (1 + e^-1 + 0.5 e^-0.5) = 1 / 1.671145
    assert nll(1.0, 0.0, "a") == pytest.approx(0.513509, abs=1e-5)
    # b wins although a is 1 ahead: d = -1, P = 1 / (1 + e + 0.5 e^0.5) = 1 / 4.542643
    assert nll(1.0, 0.0, "b") == pytest.approx(1.513509, abs=1e-5)
    # a tie at a gap of 1: P = 0.5 / (e^0.5 + e^-0.5 + 0.5) = 0.5 / 2.755252
    assert nll(1.0, 0.0, "tie") == pytest.approx(1.706656, abs=1e-5)
    # a strength-3 win must clear m = 0.5 * 2 = 1: d = 0, P = 1 / (1 + 1 + 0.5) = 0.4
    assert nll(1.0, 0.0, "a", strength=3) == pytest.approx(-math.log(0.4), abs=1e-5)
    # b's strength-2 win while a is 1 ahead: d = r_b - r_a - 0.5 = -1.5
    assert nll(1.0, 0.0, "b", strength=2) == pytest.approx(
        math.log(1 + math.exp(1.5) + 0.5 * math.exp(0.75)), abs=1e-5)
    # ties carry no margin, whatever strength they are given
    assert nll(1.0, 0.0, "tie", strength=3) == pytest.approx(nll(1.0, 0.0, "tie"), abs=1e-7)


def test_without_a_margin_the_three_outcomes_are_a_distribution():
    for gap, nu in ((0.0, 1.0), (0.7, 0.3), (-2.5, 2.0)):
        total = sum(math.exp(-nll(gap, 0.0, o, nu=nu, margin=0.0)) for o in OUTCOME_CODE)
        assert total == pytest.approx(1.0, abs=1e-6)


def _grads(r_a: float, r_b: float, outcome: str, strength: int = 1,
           margin: float = 0.5) -> tuple[float, float, float]:
    ra, rb = torch.tensor([r_a], requires_grad=True), torch.tensor([r_b], requires_grad=True)
    log_nu = torch.tensor([math.log(0.5)], requires_grad=True)
    davidson_nll(ra, rb, torch.tensor([OUTCOME_CODE[outcome]]), torch.tensor([strength]),
                 log_nu, margin).sum().backward()
    return float(ra.grad[0]), float(rb.grad[0]), float(log_nu.grad[0])


def test_a_tie_pulls_the_rewards_together_and_a_margin_pushes_a_win_further():
    # a tie at a gap: the loss falls as r_a comes down and r_b goes up; at equal rewards, rest
    ga, gb, gnu = _grads(1.0, 0.0, "tie")
    assert ga > 0 > gb and gnu < 0  # and more ties become likelier
    assert _grads(0.3, 0.3, "tie")[:2] == pytest.approx((0.0, 0.0), abs=1e-7)
    # a win already 0.5 ahead: a strong win (margin 1) still pulls much harder than a slight one
    slight, strong = _grads(0.5, 0.0, "a", strength=1), _grads(0.5, 0.0, "a", strength=3)
    assert strong[0] < slight[0] < 0 and strong[1] > slight[1] > 0
    assert abs(strong[0]) > 1.4 * abs(slight[0])
    assert slight[2] > 0  # a decided comparison makes ties less likely
    # the same win seen from b's side is the mirror image
    mirrored = _grads(0.0, 0.5, "b", strength=3)
    assert mirrored[0] == pytest.approx(strong[1]) and mirrored[1] == pytest.approx(strong[0])


def test_the_loss_is_finite_far_out():
    assert nll(200.0, -200.0, "a") == pytest.approx(0.0, abs=1e-6)
    assert nll(200.0, -200.0, "b") == pytest.approx(400.0, rel=1e-4)
    assert math.isfinite(nll(200.0, -200.0, "tie"))
    assert all(math.isfinite(g) for g in _grads(200.0, -200.0, "tie"))


# --- agreement and the ceiling ---------------------------------------------------------------


def test_human_agreement_is_the_leave_one_out_majority_per_question():
    x, y, z = (np.full((3, 2), v, np.float32) for v in (0.0, 1.0, 2.0))

    def c(item, a, b, outcome, strength=1, head="overall"):
        return Comparison(episode="e", a=a, b=b, outcome=outcome, strength=strength, head=head,
                          item=item)

    comps = [
        # i1: three judgments of (x, y), one with the sides shown the other way: all choose x
        c("i1", x, y, "a"), c("i1", x, y, "a", 2), c("i1", y, x, "b"),
        c("i1", y, z, "a"),  # the same item's other pair is another question, judged once
        c("i2", x, y, "a", 3), c("i2", x, y, "b", 3),  # they disagree
        c("i3", x, z, "a", 2), c("i3", x, z, "tie"),  # the other one could not tell: half
        c("i4", x, y, "a"),  # judged once
        c("", x, y, "a"), c("", x, y, "a"),  # no item: nothing to compare with
        # on empathy, two of three choose x: each of them sees a split, the third a majority
        c("i5", x, y, "a", head="empathy"), c("i5", x, y, "a", head="empathy"),
        c("i5", x, y, "b", head="empathy"),
    ]
    # when
    out = human_agreement(comps)
    # then
    overall = out["overall"]
    assert (overall["n"], overall["accuracy"]) == (6, pytest.approx(3.5 / 6))
    assert overall["by_strength"] == {"1": {"n": 2, "accuracy": 1.0},
                                      "2": {"n": 2, "accuracy": 0.75},
                                      "3": {"n": 2, "accuracy": 0.0}}
    assert (out["empathy"]["n"], out["empathy"]["accuracy"]) == (3, pytest.approx(1 / 3))
    assert (out["all"]["n"], out["all"]["accuracy"]) == (9, pytest.approx(0.5))
    assert out["naturalness"] == {"n": 0, "accuracy": None, "by_strength": {
        s: {"n": 0, "accuracy": None} for s in ("1", "2", "3")}}


def _block(n: int, acc: float) -> dict:
    cell = {"n": n, "accuracy": acc}
    return {h: {**cell, "by_strength": {s: dict(cell) for s in ("1", "2", "3")}}
            for h in (*HEADS, "all")}


def test_the_ceiling_check_flags_a_critic_that_beats_people_on_enough_judgments():
    flag, strata, note = ceiling_check(_block(50, 0.9), _block(50, 0.7))
    assert flag and "over-fitting" in note
    assert {"head": "overall", "strength": "all", "n": 50, "critic": 0.9,
            "human": 0.7} in strata
    assert not ceiling_check(_block(50, 0.74), _block(50, 0.7))[0]  # within the tolerance
    assert not ceiling_check(_block(10, 0.9), _block(10, 0.7))[0]  # too few to say
    assert not ceiling_check(_block(50, 0.6), _block(50, 0.7))[0]


def test_a_bootstrap_resample_draws_whole_items():
    items = ["p", "p", "p", "q", "r", "r"]
    data = SimpleNamespace(items=items)
    idx = torch.arange(len(items))
    draws = [_resample(data, idx, torch.Generator().manual_seed(s), True).tolist()
             for s in range(6)]
    for drawn in draws:
        at, groups = 0, 0
        while at < len(drawn):  # one item's comparisons, all of them, then the next item's
            group = [i for i in range(len(items)) if items[i] == items[drawn[at]]]
            assert drawn[at : at + len(group)] == group
            at, groups = at + len(group), groups + 1
        assert groups == 3  # as many draws as there are items
    assert len({tuple(d) for d in draws}) > 1  # the seed matters
    assert _resample(data, idx, torch.Generator().manual_seed(0), False).tolist() == list(range(6))


# --- the network and the ensemble --------------------------------------------------------------


def test_config_rejects_unknown_keys_and_an_empty_ensemble():
    assert CriticConfig.from_dict({"members": 5}).members == 5
    with pytest.raises(ValueError, match="unknown keys"):
        CriticConfig.from_dict({"member": 5})
    with pytest.raises(ValueError, match="members"):
        CriticConfig(members=0)


def test_rewards_come_per_head_and_padding_does_not_change_them(episodes, tiny_result):
    torch.manual_seed(0)
    p = parts(tiny_result)
    ens = CriticEnsemble([Critic(p["model_config"], p["tokenizer"].width, FAST)], config=FAST,
                         **p)
    short, long = sorted(episodes[:4], key=lambda e: e.n_frames)[:: 3]
    assert long.n_frames > short.n_frames + FAST.frame_stride
    # given: the policy's own prepared inputs
    _, prepared = tiny_result.policy.prepare([short, long])
    # when: the short episode alone, then batched with (and padded to) the long one
    alone, _ = ens.score(prepared[:1], [short.listener])
    both, _ = ens.score(prepared, [short.listener, long.listener])
    # then
    assert both.shape == (2, len(HEADS))
    np.testing.assert_allclose(both[0], alone[0], atol=1e-5)
    assert not np.allclose(both[0], both[1])
    mine, _ = ens.score(ens.prepare([short, long]), [short.listener, long.listener])
    np.testing.assert_array_equal(mine, both)  # the critic prepares episodes as the policy does


@pytest.fixture(scope="module")
def ranked(episodes: list[EpisodeData], tiny_result: TrainResult):
    """A critic trained on 20 episodes' ground truths over their frozen and jittered copies,
    held out on 10 more. (The shared ten episodes alone leave too few to learn that a frozen
    face is worse from a handful of examples.)"""
    corpus = list(episodes) + [episode_from(e) for e in generate_corpus(20, 8)]
    comps = corrupted(corpus[:20], "train", seed=1) + corrupted(corpus[20:], "test", seed=2)
    calls: list[tuple[int, int, dict]] = []
    cfg = dataclasses.replace(FAST, d_model=32, max_steps=60, batch_size=8, lr=1e-2,
                              log_every=10)
    result = train_critic(comps, {e.key: e for e in corpus}, **parts(tiny_result), config=cfg,
                          progress=lambda done, total, info: calls.append((done, total, info)))
    return SimpleNamespace(result=result, comps=comps, eps={e.key: e for e in corpus},
                           calls=calls, cfg=cfg)


def test_the_ensemble_ranks_held_out_ground_truth_above_frozen_and_jittered_faces(ranked):
    report = ranked.result.report
    held = report["heldout"]["overall"]
    test = [c for c in ranked.comps if c.split == "test"]
    # then: far better than a coin on the 40 held-out comparisons
    assert held["n"] == len(test) == 40
    assert held["accuracy"] >= 0.8  # 0.9 to 1.0 over nine seeds
    assert held["by_strength"]["2"] == {"n": 40, "accuracy": held["accuracy"]}
    # the report's figure is what scoring the pairs gives
    assert pair_accuracy(ranked.result.ensemble, test, ranked.eps) == pytest.approx(
        held["accuracy"])
    assert report["train"]["overall"]["accuracy"] >= held["accuracy"] - 0.05
    assert report["data"]["train"] == 80 and report["data"]["test"] == 40


def test_the_report_holds_human_agreement_the_ceiling_and_the_spread(ranked):
    report = ranked.result.report
    json.dumps(report, allow_nan=False)  # stored as it is
    # each frozen copy was judged twice (both sides), always for the ground truth: people agree
    # on those 20; the jittered copies are all different pairs, judged once
    assert report["human"]["overall"] == {"n": 20, "accuracy": 1.0, "by_strength": {
        "1": {"n": 0, "accuracy": None}, "2": {"n": 20, "accuracy": 1.0},
        "3": {"n": 0, "accuracy": None}}}
    assert report["heldout_on_human_set"]["overall"]["n"] == 20
    assert isinstance(report["over_ceiling"], bool) and report["over_ceiling_note"]
    assert report["over_ceiling"] is False  # nobody beats perfect agreement
    assert [m["member"] for m in report["members"]] == [0, 1]
    assert report["spread"]["mean_std"]["overall"] > 0
    assert report["steps_per_member"] == 60


def test_progress_and_history_cover_every_members_steps(ranked):
    done = [d for d, _, _ in ranked.calls]
    total = ranked.calls[-1][1]
    assert total == 2 * 60 and done[-1] == total and done == sorted(done)
    assert {info["member"] for _, _, info in ranked.calls} == {0, 1}
    for curve in ranked.result.history:
        assert [h["step"] for h in curve] == list(range(10, 61, 10))
        assert curve[-1]["loss"] < curve[0]["loss"]


def test_save_and_load_give_the_same_scores_and_refuse_other_files(ranked, tmp_path,
                                                                   tiny_result):
    ens = ranked.result.ensemble
    test = [c for c in ranked.comps if c.split == "test"][:6]
    prepared = ens.prepare(ranked.eps[c.episode] for c in test)
    # when
    sha = ens.save(tmp_path / "critic.pt")
    loaded = CriticEnsemble.load(tmp_path / "critic.pt", "cpu", expected_sha256=sha)
    # then
    assert sha == file_sha256(tmp_path / "critic.pt") == ens.content_hash == loaded.content_hash
    before, spread = ens.score(prepared, [c.a for c in test])
    after, spread_after = loaded.score(prepared, [c.a for c in test])
    np.testing.assert_array_equal(before, after)
    np.testing.assert_array_equal(spread, spread_after)
    assert loaded.config == ens.config and loaded.tokenizer == ens.tokenizer
    # a policy checkpoint, a damaged file, a pickled object, another file than the one meant
    save_checkpoint(tmp_path / "policy.pt", policy=tiny_result.policy, train_config=None,
                    step=0)
    with pytest.raises(CheckpointError, match="not a backchannel-critic file"):
        CriticEnsemble.load(tmp_path / "policy.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a zip file")
    with pytest.raises(CheckpointError, match="cannot be read safely"):
        CriticEnsemble.load(tmp_path / "junk.pt")
    with open(tmp_path / "object.pt", "wb") as f:
        pickle.dump(SimpleNamespace(format="backchannel-critic"), f, protocol=2)
    with pytest.raises(CheckpointError, match="cannot be read safely"):
        CriticEnsemble.load(tmp_path / "object.pt")
    with pytest.raises(CheckpointError, match="sha256"):
        CriticEnsemble.load(tmp_path / "critic.pt", expected_sha256="0" * 64)


def test_the_spread_is_zero_with_one_member_and_not_with_several(episodes, tiny_result, ranked):
    comps = corrupted(episodes[:3], "train", kinds=("jitter",))
    one = train_critic(comps, {e.key: e for e in episodes}, **parts(tiny_result),
                       config=dataclasses.replace(FAST, members=1)).ensemble
    prepared = one.prepare(episodes[:3])
    cands = [e.listener for e in episodes[:3]]
    mean, std = one.score(prepared, cands)
    assert np.all(std == 0) and np.any(mean != 0)
    mean, std = ranked.result.ensemble.score(prepared, cands)
    assert np.all(std > 0)
    np.testing.assert_allclose(ensemble_reward(mean, std, 2.0), mean - 2.0 * std)


# --- resume --------------------------------------------------------------------------------------


class _Killed(Exception):
    pass


def test_a_run_resumed_after_saved_members_ends_as_an_uninterrupted_one(episodes, tiny_result,
                                                                        tmp_path):
    comps = (corrupted(episodes[1:3], "train", kinds=("jitter",))
             + corrupted(episodes[3:4], "test", kinds=("jitter",)))
    eps = {e.key: e for e in episodes}
    cfg = dataclasses.replace(FAST, members=3)
    whole = train_critic(comps, eps, **parts(tiny_result), config=cfg)

    def kill_at_member_1(done: int, total: int, info: dict) -> None:
        if info.get("member") == 1:
            raise _Killed

    folder = tmp_path / "critic"
    with pytest.raises(_Killed):
        train_critic(comps, eps, **parts(tiny_result), config=cfg, progress=kill_at_member_1,
                     checkpoint_dir=folder)
    assert sorted(p.name for p in folder.iterdir()) == ["member_0.pt"]
    saved = (folder / "member_0.pt").stat().st_mtime_ns
    # when
    calls: list[dict] = []
    resumed = train_critic(comps, eps, **parts(tiny_result), config=cfg,
                           progress=lambda d, t, info: calls.append(info), checkpoint_dir=folder)
    # then: member 0 was read back, not trained again, and the ensemble is the same
    assert calls[0] == {"member": 0, "resumed": True}
    assert not any(c.get("member") == 0 and "loss" in c for c in calls)
    assert (folder / "member_0.pt").stat().st_mtime_ns == saved
    assert resumed.ensemble.content_hash == whole.ensemble.content_hash
    assert resumed.history == whole.history and resumed.report == {
        **whole.report, "seconds": resumed.report["seconds"]}
    prepared = whole.ensemble.prepare(episodes[1:4])
    cands = [e.listener for e in episodes[1:4]]
    np.testing.assert_array_equal(whole.ensemble.score(prepared, cands)[0],
                                  resumed.ensemble.score(prepared, cands)[0])
    # members of another run (another seed here) are refused, not mixed in
    with pytest.raises(ValueError, match="another critic run"):
        train_critic(comps, eps, **parts(tiny_result), checkpoint_dir=folder,
                     config=dataclasses.replace(cfg, seed=5))


# --- bad input -----------------------------------------------------------------------------------


def test_bad_comparisons_are_refused_naming_what_and_where(episodes, tiny_result):
    eps = {e.key: e for e in episodes[:3]}
    good = corrupted(episodes[:2], "train", kinds=("jitter",))

    def run(comps):
        return train_critic(comps, eps, **parts(tiny_result), config=FAST)

    ep = episodes[0]
    narrow = ep.listener[:, :5]
    nan = ep.listener.copy()
    nan[7, 2] = np.nan
    cases = [
        (Comparison(episode="nowhere", a=ep.listener, b=ep.listener, outcome="a", item="x"),
         r"comparison 4 \(item 'x'\): episode 'nowhere' is not among the episodes given"),
        (Comparison(episode=ep.key, a=narrow, b=narrow, outcome="a"),
         rf"comparison 4 \(episode '{ep.key}'.*side a: shape \({ep.n_frames}, 5\), expected "
         rf"\({ep.n_frames}, 18\)"),
        (Comparison(episode=ep.key, a=ep.listener[:-3], b=ep.listener[:-3], outcome="a"),
         rf"shape \({ep.n_frames - 3}, 18\), expected \({ep.n_frames}, 18\)"),
        (Comparison(episode=ep.key, a=ep.listener, b=nan, outcome="b"),
         r"comparison 4 .*side b: contains NaN"),
    ]
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            run(good + [bad])
    with pytest.raises(ValueError, match="none of the 4 comparisons has split 'train'"):
        run([dataclasses.replace(c, split="test") for c in good])
    with pytest.raises(ValueError, match="none of the 0 comparisons"):
        run([])
    other_fps = dataclasses.replace(episodes[2], fps=25.0)
    with pytest.raises(ValueError, match="fps"):
        train_critic(good + corrupted([episodes[2]], "train", kinds=("jitter",)),
                     {**eps, episodes[2].key: other_fps}, **parts(tiny_result), config=FAST)
