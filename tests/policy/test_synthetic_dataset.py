import json
import shlex

import numpy as np
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from policy.ml.data import episode_from
from policy.ml.evaluate import evaluate
from policy.models import Dataset, Episode
from policy.selectors import episode_arrays
from policy.services.datasets import dataset_import
from policy.synthetic import generate_episode
from rendering import blobs
from tests.conftest import media_files

pytestmark = pytest.mark.django_db


def test_make_synthetic_corpus_twice_stores_once(capsys):
    call_command("make_synthetic_corpus", "--episodes", "12", "--seed", "3", "--no-progress")
    files = media_files()
    call_command("make_synthetic_corpus", "--episodes", "12", "--seed", "3", "--no-progress")
    out = capsys.readouterr().out
    assert "12 episodes created" in out and "0 episodes created, 12 already present" in out
    assert Episode.objects.count() == 12
    assert media_files() == files
    ds = Dataset.objects.get(name="synthetic")
    assert ds.face_model == "builtin" and ds.source_format == "synthetic"
    ep = ds.episodes.order_by("key").first()
    assert ep.transcript and ep.meta["sentences"]
    assert blobs.load_array(ep.listener_sha).shape == (ep.n_frames, 18)
    audio = blobs.load_array(ep.audio_sha)
    assert abs(len(audio) / ep.audio_sample_rate - ep.n_frames / ep.fps) < 0.05


def test_files_written_in_the_corpus_format_import_to_the_same_episodes(tmp_path):
    # given: the corpus stored directly, and the same corpus written as files
    call_command("make_synthetic_corpus", "--episodes", "5", "--seed", "9", "--no-progress")
    call_command(
        "make_synthetic_corpus", "--episodes", "5", "--seed", "9", "--out", str(tmp_path / "c")
    )
    # when: the files are imported into the same dataset
    result = dataset_import(path=tmp_path / "c", fmt="backchannel")
    # then: every episode is recognised by its content
    assert (result.created, result.existing, result.blobs_written) == (0, 5, 0)
    ep = Episode.objects.get(key="syn-s9-00002")
    np.testing.assert_array_equal(
        blobs.load_array(ep.speaker_sha), np.load(tmp_path / "c/episodes/syn-s9-00002/speaker.npy")
    )


def test_home_page_lists_corpora_for_staff_only(client, django_user_model):
    call_command("make_synthetic_corpus", "--episodes", "3", "--no-progress")
    assert b"synthetic" not in client.get("/").content
    client.force_login(django_user_model.objects.create_user("r", is_staff=True))
    page = client.get("/").content.decode()
    assert "synthetic" in page and "3 episodes in all" in page


def test_episode_admin_page_draws_the_curves(client, django_user_model):
    call_command("make_synthetic_corpus", "--episodes", "1", "--no-progress")
    client.force_login(django_user_model.objects.create_superuser("root", password="x"))
    ep = Episode.objects.get()
    page = client.get(f"/admin/policy/episode/{ep.pk}/change/").content.decode()
    assert page.count("<polyline") >= 2 * 5  # listener and speaker, five curves each
    assert "listener: synthetic/" in page and "speaker: synthetic/" in page
    assert ep.transcript[0]["word"] in page


def make_corpus(options: str, *more: str) -> None:
    call_command("make_synthetic_corpus", *shlex.split(options), *more)


def test_mixed_corpus_stores_the_reference_of_rule_breaking_episodes():
    # when
    make_corpus("--episodes 12 --seed 3 --mixed 0.5 --name mixed --no-progress")
    # then: each episode's meta says what its listener is; rule breakers keep the reference
    ds = Dataset.objects.get(name="mixed")
    assert "0.5 of the listeners breaking the rules" in ds.description
    broken = 0
    for ep in ds.episodes.order_by("key"):
        index = ep.meta["generator"]["index"]
        quality = ep.meta["listener_quality"]
        assert quality["mixed_share"] == 0.5
        clean = generate_episode(3, index)
        if quality["kind"] == "clean":
            assert ep.reference_sha == ""
            np.testing.assert_array_equal(blobs.load_array(ep.listener_sha), clean.listener)
        else:
            broken += 1
            np.testing.assert_array_equal(blobs.load_array(ep.reference_sha), clean.listener)
            assert not np.array_equal(blobs.load_array(ep.listener_sha), clean.listener)
    assert 0 < broken < 12


def test_mixed_corpus_files_import_with_their_references(tmp_path):
    # given: the mixed corpus stored directly, and the same corpus written as files
    options = "--episodes 8 --seed 4 --mixed 0.6 --mixed-kinds late distracted --no-progress"
    make_corpus(options)
    make_corpus(options, "--out", str(tmp_path / "c"))
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    with_reference = [e for e in manifest["episodes"] if "reference" in e]
    assert with_reference and len(with_reference) < 8
    # when: the files are imported into the same dataset
    result = dataset_import(path=tmp_path / "c", fmt="backchannel")
    # then: every episode, reference included, is recognised by its content
    assert (result.created, result.existing, result.blobs_written) == (0, 8, 0)
    key = with_reference[0]["key"]
    ep = Episode.objects.get(key=key)
    assert ep.meta["listener_quality"]["kind"] in ("late", "distracted")
    np.testing.assert_array_equal(
        blobs.load_array(ep.reference_sha), np.load(tmp_path / "c" / with_reference[0]["reference"])
    )


def test_training_and_evaluation_read_the_reference():
    # given: a mixed corpus in the database
    make_corpus("--episodes 20 --seed 6 --mixed 0.5 --no-progress")
    ds = Dataset.objects.get(name="synthetic")
    # when: its episodes are loaded the way training and evaluation load them
    arrays = episode_arrays(ds.episodes.order_by("key"))
    data = [episode_from(a) for a in arrays]
    # then: rule breakers carry their reference, the others none
    for ep in data:
        generated = generate_episode(6, ep.meta["generator"]["index"], mixed=0.5)
        if ep.meta["listener_quality"]["kind"] == "clean":
            assert ep.reference is None
        else:
            np.testing.assert_array_equal(ep.reference, generated.reference)
    # and the held-out metrics compare the recorded listeners with their references
    report = evaluate(None, data, data, layout="builtin", baselines=("ground_truth",))
    broken = sum(ep.reference is not None for ep in data)
    assert report["n_reference"] == broken > 0
    assert report["sources"]["ground_truth"]["l2"] > 0


def test_mixed_share_out_of_range_is_refused():
    with pytest.raises(CommandError, match="--mixed"):
        make_corpus("--episodes 2 --mixed 1.5 --no-progress")
    assert not Dataset.objects.exists()
