import numpy as np
import pytest
from django.core.management import call_command

from policy.models import Dataset, Episode
from policy.services.datasets import dataset_import
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
