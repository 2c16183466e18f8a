"""The Django side of the policy: training runs, versions, candidates (tiny models, CPU)."""

import numpy as np
import pytest
from django.core.management import call_command
from django.db import IntegrityError, transaction

from policy.models import Candidate, JobStatus, PolicyVersion, TrainingRun, VersionStatus
from policy.services.candidates import candidates_generate
from policy.services.training import (
    TrainingError,
    load_version_policy,
    policy_version_promote,
    training_run_execute,
    training_run_request,
)
from rendering import blobs
from tests.policy.conftest import TINY

pytestmark = pytest.mark.django_db


@pytest.fixture
def trained(corpus) -> PolicyVersion:
    run = training_run_request(dataset=corpus, version_name="tiny", config=TINY, enqueue=False)
    return training_run_execute(run_id=run.pk)


def test_training_run_registers_a_version_with_its_checkpoint(corpus, trained):
    version = trained
    run = TrainingRun.objects.get()
    assert run.status == JobStatus.SUCCEEDED and run.progress == 100.0
    assert run.output_version == version
    assert [p[0] for p in run.loss_curve] == [1, 2, 3, 4]
    assert all(np.isfinite(p[1]) for p in run.loss_curve)
    # the stored checkpoint is the one the hash names
    data = blobs.read_blob(version.checkpoint_sha, "pt")
    assert blobs.sha256_bytes(data) == version.checkpoint_sha
    assert version.status == VersionStatus.CANDIDATE
    assert version.tokenizer["layout"] == "builtin" and version.tokenizer["n_bins"] == 256
    assert version.training_data["splits"]["train"] == corpus.episodes.filter(split="train").count()
    sources = version.metrics["sources"]
    assert {"policy", "ground_truth", "nearest_neighbour", "mirror", "mean_face"} <= set(sources)
    assert sources["ground_truth"]["oracle"] > 0.9  # the synthetic corpus's oracle is used

    # a claimed run is not trained twice
    assert training_run_execute(run_id=run.pk) is None
    # identical training (same data, config, seeds) gives the same bytes: no second version
    again = training_run_request(dataset=corpus, version_name="again", config=TINY, enqueue=False)
    assert training_run_execute(run_id=again.pk) == version
    again.refresh_from_db()
    assert again.status == JobStatus.SUCCEEDED and "identical to version tiny" in again.log
    assert PolicyVersion.objects.count() == 1
    # names are unique
    with pytest.raises(TrainingError, match="already exists"):
        training_run_request(dataset=corpus, version_name="tiny", enqueue=False)


def test_empty_train_split_fails_with_a_clear_error(corpus):
    corpus.episodes.filter(split="train").update(split="val")
    run = training_run_request(dataset=corpus, version_name="none", config=TINY, enqueue=False)
    assert training_run_execute(run_id=run.pk) is None
    run.refresh_from_db()
    assert run.status == JobStatus.FAILED
    assert "no episodes in its train split" in run.error
    assert not PolicyVersion.objects.exists()


def test_unknown_config_field_fails_clearly(corpus):
    config = {"preset": "demo", "model": {"no_such_field": 1}}
    with pytest.raises(TrainingError, match="no_such_field"):
        training_run_request(dataset=corpus, version_name="bad", config=config, enqueue=False)
    assert not TrainingRun.objects.exists()  # refused before anything is stored


def test_candidates_are_generated_once(corpus, version):
    episodes = list(corpus.episodes.order_by("key")[:3])
    created = candidates_generate(version=version, episodes=episodes, k=3, seed=1)
    assert created == 3 * 3 + 3  # K samples + the ground truth per episode
    again = candidates_generate(version=version, episodes=episodes, k=3, seed=1)
    assert again == 0
    samples = Candidate.objects.filter(source="policy", episode=episodes[0]).order_by("source_key")
    arrays = [blobs.load_array(c.array_sha) for c in samples]
    assert all(a.shape == (episodes[0].n_frames, 18) for a in arrays)
    assert not np.array_equal(arrays[0], arrays[1])  # K distinct samples
    assert {c.seed for c in samples} == {1} and {c.temperature for c in samples} == {1.0}
    # another seed is another set of candidates
    assert candidates_generate(version=version, episodes=episodes[:1], k=3, seed=2) == 3


def test_baseline_candidates(corpus, version):
    episodes = list(corpus.episodes.filter(split="test")[:2])
    created = candidates_generate(
        version=version,
        episodes=episodes,
        k=1,
        ground_truth=False,
        baselines=["nearest_neighbour", "mirror"],
    )
    assert created == 2 * 1 + 2 * 2
    assert Candidate.objects.filter(source="baseline", baseline="mirror").count() == 2
    with pytest.raises(ValueError, match="unknown baseline"):
        candidates_generate(version=version, episodes=episodes, k=1, baselines=["oracle"])


def test_a_tampered_checkpoint_is_refused(version, settings):
    from pathlib import Path

    from policy.ml.errors import ChecksumMismatchError

    path = Path(settings.MEDIA_ROOT) / blobs.blob_name(version.checkpoint_sha, "pt")
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatchError):
        load_version_policy(version)


def test_only_one_promoted_version_per_lineage(corpus, version):
    second = PolicyVersion.objects.create(
        name="tiny2", checkpoint_sha="0" * 64, config={}, tokenizer={}, dataset=corpus
    )
    policy_version_promote(version=version)
    policy_version_promote(version=second)
    version.refresh_from_db()
    second.refresh_from_db()
    assert (version.status, second.status) == (VersionStatus.RETIRED, VersionStatus.PROMOTED)
    with pytest.raises(IntegrityError), transaction.atomic():
        PolicyVersion.objects.filter(pk=version.pk).update(status=VersionStatus.PROMOTED)


def test_commands_and_admin_pages(corpus, client, django_user_model, capsys):
    call_command(
        "train_policy",
        "--dataset",
        "syn",
        "--name",
        "cmd",
        "--steps",
        "3",
        "--no-progress",
        "--config",
        '{"model": {"d_model": 16, "n_layers": 1, "n_heads": 2}, "eval_episodes": 2}',
    )
    call_command(
        "generate_candidates",
        "--version",
        "cmd",
        "--episodes",
        "test",
        "--limit",
        "2",
        "--k",
        "2",
        "--no-progress",
    )
    call_command("evaluate_policy", "--version", "cmd", "--episodes", "2")
    out = capsys.readouterr().out
    assert "policy version cmd" in out
    assert "6 candidates created for 2 episodes" in out
    assert "nearest_neighbour" in out
    client.force_login(django_user_model.objects.create_superuser("root", password="x"))
    run = TrainingRun.objects.get(version_name="cmd")
    page = client.get(f"/admin/policy/trainingrun/{run.pk}/change/").content.decode()
    # the loss curve: a line, or a bar and a point where it has one value so far
    assert ("<polyline" in page or "<circle" in page) and "Training loss" in page
    assert "[[3," not in page  # the curve is drawn, not dumped
    version = PolicyVersion.objects.get(name="cmd")
    page = client.get(f"/admin/policy/policyversion/{version.pk}/change/").content.decode()
    assert "nearest_neighbour" in page
