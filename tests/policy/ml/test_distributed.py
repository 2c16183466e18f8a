"""Data-parallel SFT on CPU: gloo, two processes against one, the same global batch.

Two processes are started twice: once with torch.multiprocessing (the scenarios below, each rank
reporting what it saw) and once through torchrun, the way the gpu worker launches a run.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from policy.ml import distributed
from policy.ml.checkpoint import load_checkpoint
from policy.ml.distributed import SINGLE, Dist, DistributedError
from policy.ml.train import loss_counts, sft_loss, train
from policy.ml.train_dist import export_episodes, load_episodes, train_with_torchrun

from .conftest import tiny_configs

RTOL, ATOL = 1e-4, 1e-5  # float32, summed in another order


def _configs(**train_overrides):
    model, train_cfg = tiny_configs(**train_overrides)
    return dataclasses.replace(model, dropout=0.0), train_cfg  # same masks need no dropout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _summary(result) -> dict:
    return {"losses": [h["loss"] for h in result.history],
            "params": {k: v.detach().clone() for k, v in result.policy.model.state_dict().items()},
            "sha": result.checkpoint_sha256, "world": result.world_size}


def _without_audio(episodes: list) -> list:
    return [dataclasses.replace(e, audio=None, sample_rate=None) for e in episodes]


def _worker(rank: int, world: int, port: int, tmp: Path, data: list, one_part: Path) -> None:
    """One rank of the scenarios; writes what it saw to ``rank<r>.pt``."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import policy.ml.train as train_module

    saves: list[int] = []
    save = train_module.save_checkpoint

    def counted_save(*args, **kwargs):
        saves.append(rank)
        return save(*args, **kwargs)

    train_module.save_checkpoint = counted_save
    d = distributed.init("cpu", timeout_s=120)
    out: dict = {"dist": d}
    try:
        model_cfg, train_cfg = _configs(max_steps=6, checkpoint_every=2)
        calls: list[int] = []
        full = train(data, model_cfg, train_cfg, checkpoint_path=tmp / "two.pt",
                     progress=lambda step, total, losses: calls.append(step))
        out.update(full=_summary(full), progress_calls=calls, saves=len(saves))
        # With dropout: every rank's masks are its own, and a resumed run draws them again.
        drop_cfg = dataclasses.replace(model_cfg, dropout=0.1)
        whole = train(data, drop_cfg, train_cfg, checkpoint_path=tmp / "drop-whole.pt")
        train(data, drop_cfg, train_cfg, checkpoint_path=tmp / "drop-part.pt", stop_at_step=3)
        rest = train(data, checkpoint_path=tmp / "drop-part.pt", resume_from=tmp / "drop-part.pt")
        out.update(drop_whole=_summary(whole), drop_rest=_summary(rest))
        # A world-size-1 checkpoint continues under world size 2.
        out["cross"] = _summary(train(data, checkpoint_path=tmp / "cross.pt",
                                      resume_from=one_part))
        # Episodes without audio: the audio encoder gets no gradient on any rank.
        out["no_audio"] = _summary(train(_without_audio(data), model_cfg,
                                         dataclasses.replace(train_cfg, max_steps=2)))
        try:
            train(data, model_cfg, dataclasses.replace(train_cfg, batch_size=5))
        except DistributedError as exc:
            out["uneven"] = str(exc)
    finally:
        distributed.destroy()
    torch.save(out, tmp / f"rank{rank}.pt")


def _close(a: list[float], b: list[float]) -> bool:
    return np.allclose(a, b, rtol=RTOL, atol=ATOL)


def _params_close(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), rtol=RTOL,
                                                       atol=ATOL) for k in a)


def test_two_processes_train_like_one_and_resume(tmp_path, episodes):
    # given: world-size-1 runs of the same configs, one of them stopped at step 3
    data = episodes[:4]
    model_cfg, train_cfg = _configs(max_steps=6, checkpoint_every=2)
    one = _summary(train(data, model_cfg, train_cfg))
    no_audio = _summary(train(_without_audio(data), model_cfg,
                              dataclasses.replace(train_cfg, max_steps=2)))
    train(data, model_cfg, train_cfg, checkpoint_path=tmp_path / "one-part.pt", stop_at_step=3)

    # when: two gloo processes run the scenarios of _worker
    mp.start_processes(_worker, args=(2, _free_port(), tmp_path, data, tmp_path / "one-part.pt"),
                       nprocs=2, start_method="spawn")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))

    # then: the same loss curve and weights as one process, within float tolerance
    assert r0["dist"] == Dist(0, 2, 0, "gloo") and r1["dist"] == Dist(1, 2, 1, "gloo")
    assert r0["full"]["world"] == 2 and len(one["losses"]) == 6
    assert _close(r0["full"]["losses"], one["losses"])
    assert r0["full"]["losses"] == r1["full"]["losses"]  # both ranks read the summed losses
    assert _params_close(r0["full"]["params"], one["params"])
    assert all(torch.equal(r0["full"]["params"][k], r1["full"]["params"][k])
               for k in r0["full"]["params"])
    # rank 0 alone writes checkpoints (steps 2, 4, 6) and reports progress
    assert (r0["saves"], r1["saves"]) == (3, 0)
    assert (r0["progress_calls"], r1["progress_calls"]) == ([1, 2, 3, 4, 5, 6], [])
    assert r0["full"]["sha"] == load_checkpoint(tmp_path / "two.pt").sha256
    assert r1["full"]["sha"] is None
    saved = load_checkpoint(tmp_path / "two.pt").state["model"]
    assert all(torch.equal(saved[k], r0["full"]["params"][k]) for k in saved)
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    # a run resumed under world size 2 ends exactly where the uninterrupted one ends
    whole, rest = r0["drop_whole"], r0["drop_rest"]
    assert whole["losses"] == rest["losses"]
    assert all(torch.equal(whole["params"][k], rest["params"][k]) for k in whole["params"])
    assert whole["sha"] == rest["sha"]  # the very same checkpoint bytes
    assert not _close(whole["losses"], r0["full"]["losses"])  # dropout was on
    # a world-size-1 checkpoint continues under world size 2 as it would have under 1
    assert _params_close(r0["cross"]["params"], one["params"])
    assert _close(r0["cross"]["losses"], one["losses"])
    # an encoder without input (no audio anywhere) trains on as it does in one process
    assert _close(r0["no_audio"]["losses"], no_audio["losses"])
    assert _params_close(r0["no_audio"]["params"], no_audio["params"])
    # a global batch that does not split evenly is refused on every rank
    for r in (r0, r1):
        assert "batch_size 5" in r["uneven"] and "multiple of 2" in r["uneven"]


def test_the_gpu_worker_path_runs_torchrun_with_the_same_result(tmp_path, episodes):
    # given
    data, val = episodes[:4], episodes[6:8]
    model_cfg, train_cfg = _configs(max_steps=5, log_every=1)
    one = train(data, model_cfg, train_cfg, val_episodes=val)
    seen: list[int] = []

    # when
    two = train_with_torchrun(data, model_cfg, train_cfg, nproc=2, val_episodes=val,
                              checkpoint_path=tmp_path / "p.pt", workdir=tmp_path / "work",
                              progress=lambda step, total, losses: seen.append(step),
                              poll_s=0.2, threads=1)

    # then: every logged step reached the caller once (rank 0 alone writes progress)
    assert two.world_size == 2 and two.step == 5 and seen == [1, 2, 3, 4, 5]
    assert _close([h["loss"] for h in two.history], [h["loss"] for h in one.history])
    assert np.isclose(two.history[-1]["val_loss"], one.history[-1]["val_loss"], rtol=RTOL)
    assert _params_close(two.policy.model.state_dict(), one.policy.model.state_dict())
    assert two.checkpoint_sha256 == load_checkpoint(tmp_path / "p.pt").sha256


def test_a_failed_launch_says_why(tmp_path):
    with pytest.raises(DistributedError, match="EmptySplitError"):
        distributed.launch("policy.ml.train_dist", ["--data", tmp_path, "--out", tmp_path / "x"],
                           nproc=1, log_path=tmp_path / "log", poll_s=0.2)


def test_shares_of_the_loss_add_up_to_the_loss_of_the_whole_batch():
    # given: a batch whose halves have very different numbers of supervised frames
    gen = torch.Generator().manual_seed(0)
    b, p, c, d, k = 6, 5, 3, 4, 8
    logits = torch.randn(b, p, c, d, k, generator=gen)
    targets = torch.randint(k, (b, p, c, d), generator=gen)
    mask = torch.rand(b, p, c, generator=gen) < 0.9
    mask[3:, 2:] = False
    centers = torch.linspace(-1, 1, k).expand(d, k)
    expression, pose = torch.tensor([0, 1, 2]), torch.tensor([3])
    _, tcfg = tiny_configs()
    for tiled in (False, True):
        whole, _ = sft_loss(logits, targets, mask, centers, expression, pose, tcfg, tiled)
        # when: each half is normalised by the counts of the whole batch
        counts = loss_counts(mask[:3], tiled) + loss_counts(mask[3:], tiled)
        halves = [sft_loss(logits[s], targets[s], mask[s], centers, expression, pose, tcfg,
                           tiled, counts)[0] for s in (slice(0, 3), slice(3, 6))]
        own = [sft_loss(logits[s], targets[s], mask[s], centers, expression, pose, tcfg,
                        tiled)[0] for s in (slice(0, 3), slice(3, 6))]
        # then: they add up; the halves' own means would not
        assert torch.allclose(halves[0] + halves[1], whole, rtol=1e-6)
        assert not torch.allclose((own[0] + own[1]) / 2, whole, rtol=1e-3)


def test_world_sizes_and_launches_that_cannot_work_are_refused(monkeypatch):
    with pytest.raises(DistributedError, match="make it a multiple of 2"):
        distributed.check_batch(5, 2)
    with pytest.raises(DistributedError, match="RANK=2 is outside 0 .. 1"):
        distributed.env_ranks({"WORLD_SIZE": "2", "RANK": "2"})
    with pytest.raises(DistributedError, match="RANK is not"):
        distributed.env_ranks({"WORLD_SIZE": "2"})
    with pytest.raises(DistributedError, match="'two' is not an integer"):
        distributed.env_ranks({"WORLD_SIZE": "two", "RANK": "0"})
    with pytest.raises(DistributedError, match="at least one process"):
        distributed.torchrun_command("policy.ml.train_dist", [], nproc=0)
    with pytest.raises(DistributedError, match="gloo"):
        distributed.device_for(Dist(0, 2, 0, "gloo"), "cuda")
    # the trainer refuses an uneven shard before it builds anything
    _, tcfg = tiny_configs(batch_size=6)
    with pytest.raises(DistributedError, match="batch_size 6 .* over 4 processes"):
        distributed.check_batch(tcfg.batch_size, 4)
    # without torchrun: world size 1, no process group, the code path of before
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init("cpu") == SINGLE and distributed.current() == SINGLE
    assert distributed.env_ranks({"WORLD_SIZE": "3", "RANK": "2", "LOCAL_RANK": "0"}) == (2, 3, 0)


def test_shards_cover_every_row_of_the_global_batch_once():
    rows = [list(range(12))[distributed.shard(12, Dist(r, 3))] for r in range(3)]
    assert rows == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert distributed.shard(12, SINGLE) == slice(0, 12)


def test_launch_environment_keeps_multicast_off():
    env = distributed.launch_env()
    assert (env["NCCL_NVLS_ENABLE"], env["TORCH_SYMM_MEM_DISABLE_MULTICAST"],
            env["NVSHMEM_DISABLE_NVLS"]) == ("0", "1", "1")
    cmd = distributed.torchrun_command("policy.ml.train_dist", ["--data", "d"], nproc=4)
    assert cmd[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4",
                        "-m"]


def test_exported_episodes_come_back_unchanged(tmp_path, episodes):
    eps = [dataclasses.replace(episodes[0], video_path="/v/speaker.mp4", video_sha="ab" * 32,
                               face_box=(1, 2, 30, 40)), *episodes[1:3]]
    export_episodes(eps, tmp_path, "train")
    back = load_episodes(tmp_path, "train")
    assert load_episodes(tmp_path, "val") == []
    for a, b in zip(eps, back, strict=True):
        assert (a.key, a.fps, a.sample_rate, a.transcript, a.split) == \
            (b.key, b.fps, b.sample_rate, b.transcript, b.split)
        assert (a.video_path, a.video_sha, a.face_box) == (b.video_path, b.video_sha, b.face_box)
        assert np.array_equal(a.speaker, b.speaker) and np.array_equal(a.listener, b.listener)
        assert np.array_equal(a.audio, b.audio) and a.speaker.dtype == b.speaker.dtype
