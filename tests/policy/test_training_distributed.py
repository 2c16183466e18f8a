"""A training run that the gpu worker hands to torchrun (two gloo processes on CPU here)."""

import dataclasses

import pytest

from policy.models import JobStatus, TrainingRun
from policy.services.synthetic import synthetic_corpus_create
from policy.services.training import (
    TrainingError,
    _processes,
    training_run_execute,
    training_run_request,
)
from tests.policy.conftest import TINY  # the same tiny model

pytestmark = pytest.mark.django_db



def test_a_distributed_run_trains_under_torchrun_and_registers_its_version():
    # given
    dataset = synthetic_corpus_create(episodes=24, seed=5, name="syn").dataset
    config = {**TINY, "distributed": True, "nproc": 2}
    run = training_run_request(dataset=dataset, version_name="ddp", config=config, enqueue=False)
    seen: list[int] = []

    # when
    version = training_run_execute(run_id=run.pk, progress_hook=lambda s, t, losses: seen.append(s))

    # then: rank 0's progress lines reached the row, once per logged step
    run.refresh_from_db()
    assert run.status == JobStatus.SUCCEEDED, run.error
    assert version is not None and version.checkpoint_sha == run.output_version.checkpoint_sha
    assert [p[0] for p in run.loss_curve] == [1, 2, 3, 4] == seen
    assert "2 processes under torchrun" in run.log
    assert version.metrics.get("sources")  # evaluated like any other version


def test_the_number_of_processes_follows_the_config_and_the_gpus():
    from policy.ml.demo import DEMO_TRAIN

    cpu = DEMO_TRAIN  # device "cpu": no GPUs count
    assert _processes({}, cpu) == 0  # in this process, as before
    assert _processes({"distributed": False, "nproc": 2}, cpu) == 0
    assert _processes({"distributed": True}, cpu) == 1
    assert _processes({"distributed": True, "nproc": 3}, cpu) == 3
    assert _processes({"nproc": 2}, cpu) == 2
    auto = dataclasses.replace(DEMO_TRAIN, device="auto")
    import torch

    gpus = torch.cuda.device_count()
    assert _processes({}, auto) == (gpus if gpus > 1 else 0)


def test_a_bad_distributed_setting_is_refused_when_the_run_is_requested():
    dataset = synthetic_corpus_create(episodes=4, seed=5, name="syn").dataset
    for bad, msg in (({"distributed": "yes"}, "config.distributed"),
                     ({"nproc": 0}, "config.nproc"), ({"nproc": "2"}, "config.nproc")):
        with pytest.raises(TrainingError, match=msg):
            training_run_request(dataset=dataset, version_name="x", config={**TINY, **bad},
                                 enqueue=False)
    assert not TrainingRun.objects.exists()
