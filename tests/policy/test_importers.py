import json
import os
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from policy.importers import ImportProblem
from policy.models import Dataset, Episode
from policy.services.datasets import dataset_import
from rendering import blobs
from tests.conftest import media_files
from tests.policy.corpus_files import write_backchannel_corpus, write_l2l_folder, write_manifest

pytestmark = pytest.mark.django_db


def snapshot() -> tuple:
    """Everything an import could change: rows and stored files."""
    return (
        list(Dataset.objects.values_list("name", "face_model")),
        sorted(Episode.objects.values_list("dataset__name", "key", "content_hash")),
        media_files(),
    )


def zip_folder(folder: Path, out: Path, top: str = "") -> Path:
    with zipfile.ZipFile(out, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, top + path.relative_to(folder).as_posix())
    return out


def assert_fails_cleanly(
    path: Path, *, fmt: str = "backchannel", file: str, field: str, reason: str
):
    before = snapshot()
    with pytest.raises(ImportProblem) as info:
        dataset_import(path=path, fmt=fmt)
    message = str(info.value)
    assert file in info.value.file, message
    assert field in info.value.field, message
    assert reason in info.value.reason.lower(), message
    assert snapshot() == before
    return message


# --- the project's own layout ---------------------------------------------------------------


def test_import_folder_stores_episodes_and_arrays(tmp_path):
    # given
    manifest = write_backchannel_corpus(tmp_path / "corpus", n=3)
    # when
    result = dataset_import(path=tmp_path / "corpus", fmt="backchannel")
    # then
    assert (result.created, result.existing) == (3, 0)
    ds = Dataset.objects.get(name="tiny")
    assert ds.face_model == "builtin"
    ep = Episode.objects.get(dataset=ds, key="ep-001")
    assert ep.split == "val" and ep.fps == 30 and ep.n_frames == 60
    listener = np.load(tmp_path / "corpus" / manifest["episodes"][1]["listener"])
    np.testing.assert_array_equal(blobs.load_array(ep.listener_sha), listener)
    assert blobs.load_array(ep.audio_sha).shape == (32000,)
    assert ep.audio_sample_rate == 16000
    assert ep.transcript[1] == {"word": "there", "start": 0.5, "end": 0.9}
    assert ep.meta == {"note": "episode 1"}


def test_second_import_of_same_files_is_a_noop(tmp_path):
    write_backchannel_corpus(tmp_path / "corpus", n=4)
    dataset_import(path=tmp_path / "corpus", fmt="backchannel")
    before = snapshot()
    mtimes = {p: os.stat(Path(blobs.default_storage.path(p))).st_mtime_ns for p in before[2]}

    again = dataset_import(path=tmp_path / "corpus", fmt="backchannel")
    # The same files zipped inside a top folder are the same content too.
    archive = zip_folder(tmp_path / "corpus", tmp_path / "corpus.zip", top="corpus/")
    zipped = dataset_import(path=archive, fmt="backchannel")

    assert (again.created, again.existing, again.blobs_written) == (0, 4, 0)
    assert (zipped.created, zipped.existing, zipped.blobs_written) == (0, 4, 0)
    assert snapshot() == before
    assert {
        p: os.stat(Path(blobs.default_storage.path(p))).st_mtime_ns for p in before[2]
    } == mtimes


def test_import_adds_only_new_episodes(tmp_path):
    write_backchannel_corpus(tmp_path / "a", n=2)
    dataset_import(path=tmp_path / "a", fmt="backchannel")
    write_backchannel_corpus(tmp_path / "b", n=3)  # same seed: the first two are identical
    result = dataset_import(path=tmp_path / "b", fmt="backchannel")
    assert (result.created, result.existing) == (1, 2)
    assert Episode.objects.count() == 3


def test_command_imports_with_progress_and_reports(tmp_path, capsys):
    write_backchannel_corpus(tmp_path / "corpus", n=2)
    call_command("import_dataset", str(tmp_path / "corpus"), "--format", "backchannel")
    out = capsys.readouterr()
    assert "2 episodes imported" in out.out
    assert "import" in out.err  # the progress bar
    with pytest.raises(CommandError, match="nothing was stored"):
        call_command("import_dataset", str(tmp_path / "missing"), "--no-progress")


def test_manifest_missing_field(tmp_path):
    manifest = write_backchannel_corpus(tmp_path / "c", n=3)
    del manifest["episodes"][2]["listener"]
    write_manifest(tmp_path / "c", manifest)
    msg = assert_fails_cleanly(
        tmp_path / "c", file="manifest.json", field="episodes[2].listener", reason="missing"
    )
    assert "required field missing" in msg


@pytest.mark.parametrize("field", ["name", "face_model", "episodes", "format"])
def test_manifest_missing_top_level_field(tmp_path, field):
    manifest = write_backchannel_corpus(tmp_path / "c", n=1)
    del manifest[field]
    write_manifest(tmp_path / "c", manifest)
    assert_fails_cleanly(tmp_path / "c", file="manifest.json", field=field, reason="missing")


def test_manifest_not_json(tmp_path):
    write_backchannel_corpus(tmp_path / "c", n=1)
    (tmp_path / "c" / "manifest.json").write_text("{ not json")
    assert_fails_cleanly(tmp_path / "c", file="manifest.json", field="manifest", reason="json")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_in_the_last_episode_undo_everything(tmp_path, bad):
    # given: two good episodes, then one with a bad value (blobs of the first two get written)
    write_backchannel_corpus(tmp_path / "c", n=3)
    path = tmp_path / "c" / "episodes" / "ep-002" / "listener.npy"
    array = np.load(path)
    array[17, 4] = bad
    np.save(path, array)
    # when / then
    msg = assert_fails_cleanly(
        tmp_path / "c", file="episodes/ep-002/listener.npy", field="listener", reason="frame 17"
    )
    assert "dim 4" in msg
    assert media_files() == set()


def test_nan_in_audio(tmp_path):
    write_backchannel_corpus(tmp_path / "c", n=2)
    path = tmp_path / "c" / "episodes" / "ep-001" / "audio.npy"
    audio = np.load(path)
    audio[100] = np.nan
    np.save(path, audio)
    assert_fails_cleanly(tmp_path / "c", file="ep-001", field="audio", reason="nan")


def test_wrong_dimension_for_layout(tmp_path):
    write_backchannel_corpus(tmp_path / "c", n=2)
    path = tmp_path / "c" / "episodes" / "ep-001" / "listener.npy"
    np.save(path, np.zeros((60, 17), np.float32))
    msg = assert_fails_cleanly(
        tmp_path / "c", file="ep-001/listener.npy", field="listener", reason="width 17"
    )
    assert "builtin" in msg and "18" in msg


def test_listener_and_speaker_of_different_lengths(tmp_path):
    write_backchannel_corpus(tmp_path / "c", n=2)
    path = tmp_path / "c" / "episodes" / "ep-001" / "speaker.npy"
    np.save(path, np.zeros((59, 18), np.float32))
    assert_fails_cleanly(tmp_path / "c", file="ep-001", field="speaker", reason="59 frames")


def test_listener_and_speaker_of_different_fps(tmp_path):
    manifest = write_backchannel_corpus(tmp_path / "c", n=2)
    manifest["episodes"][1]["speaker_fps"] = 25
    write_manifest(tmp_path / "c", manifest)
    assert_fails_cleanly(
        tmp_path / "c", file="manifest.json", field="episodes[1].speaker_fps", reason="25 fps"
    )


def test_audio_of_a_different_duration(tmp_path):
    write_backchannel_corpus(tmp_path / "c", n=1)
    np.save(tmp_path / "c" / "episodes" / "ep-000" / "audio.npy", np.zeros(16000 * 5, np.float32))
    assert_fails_cleanly(tmp_path / "c", file="ep-000", field="audio", reason="lasts 5.000 s")


def test_truncated_npy(tmp_path):
    write_backchannel_corpus(tmp_path / "c", n=3)
    path = tmp_path / "c" / "episodes" / "ep-002" / "speaker.npy"
    path.write_bytes(path.read_bytes()[:-100])
    assert_fails_cleanly(
        tmp_path / "c", file="ep-002/speaker.npy", field="speaker", reason="not a valid .npy"
    )


def test_pickled_npy_is_refused(tmp_path):
    write_backchannel_corpus(tmp_path / "c", n=1)
    path = tmp_path / "c" / "episodes" / "ep-000" / "listener.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert_fails_cleanly(tmp_path / "c", file="listener.npy", field="listener", reason="pickled")


def test_transcript_out_of_order(tmp_path):
    write_backchannel_corpus(tmp_path / "c", n=1)
    words = [{"word": "b", "start": 0.5, "end": 0.6}, {"word": "a", "start": 0.1, "end": 0.2}]
    (tmp_path / "c" / "episodes" / "ep-000" / "transcript.json").write_text(json.dumps(words))
    assert_fails_cleanly(tmp_path / "c", file="ep-000", field="transcript[1]", reason="ordered")


def test_zip_with_parent_paths_is_refused(tmp_path):
    folder = tmp_path / "c"
    write_backchannel_corpus(folder, n=1)
    archive = zip_folder(folder, tmp_path / "evil.zip")
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("../../outside.txt", "x")
    assert_fails_cleanly(archive, file="evil.zip", field="../../outside.txt", reason="'..'")
    assert not (tmp_path.parent / "outside.txt").exists()


def test_zip_with_absolute_path_is_refused(tmp_path):
    archive = tmp_path / "abs.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("/etc/manifest.json", "{}")
    assert_fails_cleanly(archive, file="abs.zip", field="/etc/manifest.json", reason="absolute")


def test_zip_with_symlink_is_refused(tmp_path):
    folder = tmp_path / "c"
    write_backchannel_corpus(folder, n=1)
    archive = zip_folder(folder, tmp_path / "link.zip")
    info = zipfile.ZipInfo("episodes/ep-000/secret.npy")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr(info, "/etc/passwd")
    assert_fails_cleanly(archive, file="secret.npy", field="file", reason="symbolic link")


def test_folder_with_symlink_is_refused(tmp_path):
    folder = tmp_path / "c"
    write_backchannel_corpus(folder, n=1)
    (folder / "episodes" / "ep-000" / "passwd.npy").symlink_to("/etc/passwd")
    assert_fails_cleanly(folder, file="passwd.npy", field="file", reason="symbolic link")


def test_file_over_the_size_limit(tmp_path, settings):
    write_backchannel_corpus(tmp_path / "c", n=2)
    settings.IMPORT_MAX_FILE_BYTES = 100_000  # the audio files are 128 kB
    assert_fails_cleanly(tmp_path / "c", file="audio.npy", field="size", reason="over the limit")


def test_zip_total_over_the_limit(tmp_path, settings):
    write_backchannel_corpus(tmp_path / "c", n=3)
    archive = zip_folder(tmp_path / "c", tmp_path / "c.zip")
    settings.IMPORT_MAX_TOTAL_BYTES = 200_000
    assert_fails_cleanly(archive, file="c.zip", field="size", reason="over the limit")


def test_zip_bomb_is_refused_before_reading(tmp_path, settings):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("manifest.json", "{}")
        zf.writestr("episodes/big.npy", b"\0" * 5_000_000)
    assert archive.stat().st_size < 100_000
    settings.IMPORT_MAX_TOTAL_BYTES = 1_000_000
    assert_fails_cleanly(archive, file="bomb.zip", field="size", reason="over the limit")


def test_not_a_zip(tmp_path):
    path = tmp_path / "corpus.zip"
    path.write_bytes(b"PK\x03\x04 this is not really a zip")
    assert_fails_cleanly(path, file="corpus.zip", field="archive", reason="not a readable zip")


def test_same_key_with_different_content_is_refused(tmp_path):
    write_backchannel_corpus(tmp_path / "a", n=2, seed=0)
    dataset_import(path=tmp_path / "a", fmt="backchannel")
    write_backchannel_corpus(tmp_path / "b", n=2, seed=1)
    assert_fails_cleanly(tmp_path / "b", file="ep-000", field="key", reason="different content")


def test_existing_dataset_with_another_face_model_is_refused(tmp_path):
    write_backchannel_corpus(tmp_path / "a", n=1, name="mixed")
    dataset_import(path=tmp_path / "a", fmt="backchannel")
    write_l2l_folder(tmp_path / "l2l" / "conan" / "train", n=1)
    before = snapshot()
    with pytest.raises(ImportProblem, match="face_model"):
        dataset_import(path=tmp_path / "l2l", fmt="l2l", name="mixed")
    assert snapshot() == before


# --- the reference listener stream --------------------------------------------------------------


def test_reference_stream_is_stored_and_content_addressed(tmp_path):
    # given: a corpus whose episodes keep a reference listener beside the ground truth
    write_backchannel_corpus(tmp_path / "c", n=3, reference=True)
    # when
    result = dataset_import(path=tmp_path / "c", fmt="backchannel")
    again = dataset_import(path=tmp_path / "c", fmt="backchannel")
    # then
    assert (result.created, again.existing, again.blobs_written) == (3, 3, 0)
    ep = Episode.objects.get(key="ep-002")
    reference = np.load(tmp_path / "c" / "episodes" / "ep-002" / "reference.npy")
    np.testing.assert_array_equal(blobs.load_array(ep.reference_sha), reference)
    assert ep.reference_sha != ep.listener_sha


def test_episodes_without_a_reference_keep_their_content_hash(tmp_path):
    # given: the same episodes, imported once without and once with a reference stream
    write_backchannel_corpus(tmp_path / "plain", n=2, name="plain")
    write_backchannel_corpus(tmp_path / "ref", n=2, name="ref", reference=True)
    dataset_import(path=tmp_path / "plain", fmt="backchannel")
    dataset_import(path=tmp_path / "ref", fmt="backchannel")
    # then: no reference leaves the hash as it was; a reference is part of the content
    plain = Episode.objects.get(dataset__name="plain", key="ep-000")
    ref = Episode.objects.get(dataset__name="ref", key="ep-000")
    assert plain.reference_sha == "" and ref.reference_sha
    assert plain.listener_sha == ref.listener_sha and plain.content_hash != ref.content_hash


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_reference_is_refused_whole(tmp_path, bad):
    write_backchannel_corpus(tmp_path / "c", n=3, reference=True)
    path = tmp_path / "c" / "episodes" / "ep-002" / "reference.npy"
    array = np.load(path)
    array[5, 3] = bad
    np.save(path, array)
    msg = assert_fails_cleanly(
        tmp_path / "c", file="episodes/ep-002/reference.npy", field="reference", reason="frame 5"
    )
    assert "dim 3" in msg
    assert media_files() == set()


@pytest.mark.parametrize(
    "shape, reason", [((59, 18), "shape (59, 18)"), ((60, 17), "shape (60, 17)"), ((60,), "2 dim")]
)
def test_reference_of_the_wrong_shape_is_refused_whole(tmp_path, shape, reason):
    write_backchannel_corpus(tmp_path / "c", n=3, reference=True)
    np.save(tmp_path / "c" / "episodes" / "ep-001" / "reference.npy", np.zeros(shape, np.float32))
    msg = assert_fails_cleanly(
        tmp_path / "c", file="ep-001/reference.npy", field="reference", reason=reason
    )
    assert media_files() == set(), msg


def test_reference_named_in_the_manifest_must_be_an_npy_in_the_import(tmp_path):
    manifest = write_backchannel_corpus(tmp_path / "c", n=2, reference=True)
    manifest["episodes"][1]["reference"] = "episodes/ep-001/missing.npy"
    write_manifest(tmp_path / "c", manifest)
    assert_fails_cleanly(
        tmp_path / "c", file="manifest.json", field="episodes[1].reference", reason="not in"
    )
    manifest["episodes"][1]["reference"] = "episodes/ep-001/transcript.json"
    write_manifest(tmp_path / "c", manifest)
    assert_fails_cleanly(
        tmp_path / "c", file="manifest.json", field="episodes[1].reference", reason=".npy"
    )


# --- Learning to Listen ----------------------------------------------------------------------


def test_l2l_layout_pairs_listener_of_p0_with_speaker_of_p1(tmp_path):
    # given: data/<channel>/{train,test}/ with N x 64 x 184 arrays
    train = write_l2l_folder(tmp_path / "data" / "conan" / "train", n=3, seed=1)
    write_l2l_folder(tmp_path / "data" / "conan" / "test", n=2, seed=2)
    # when
    result = dataset_import(path=tmp_path / "data", fmt="l2l")
    # then: two episodes per window (p0 listening, p1 listening)
    assert result.created == 2 * 3 + 2 * 2
    ds = Dataset.objects.get(name="l2l")
    assert ds.face_model == "flame56"
    ep = Episode.objects.get(key="conan/train/p0-00002")
    assert ep.split == "train" and ep.fps == 30 and ep.n_frames == 64
    np.testing.assert_array_equal(
        blobs.load_array(ep.listener_sha), train["p0_list_faces"][2, :, :56]
    )
    np.testing.assert_array_equal(
        blobs.load_array(ep.speaker_sha), train["p1_speak_faces"][2, :, :56]
    )
    np.testing.assert_array_equal(
        blobs.load_array(ep.audio_features_sha), train["p1_speak_audio"][2]
    )
    assert ep.meta["l2l"]["channel"] == "conan"
    assert ep.meta["l2l"]["speaker_files_first"] == ["video1_2", "128", "0"]
    other = Episode.objects.get(key="conan/train/p1-00000")
    np.testing.assert_array_equal(
        blobs.load_array(other.speaker_sha), train["p0_speak_faces"][0, :, :56]
    )
    assert Episode.objects.filter(split="test").count() == 4
    # and a second import is a no-op
    again = dataset_import(path=tmp_path / "data", fmt="l2l")
    assert (again.created, again.existing) == (0, 10)


def test_l2l_pose_first_is_reordered(tmp_path):
    arrays = write_l2l_folder(tmp_path / "x" / "train", n=1)
    dataset_import(path=tmp_path / "x", fmt="l2l", options={"pose_first": True})
    ep = Episode.objects.get(key="train/p0-00000")
    stored = blobs.load_array(ep.listener_sha)
    source = arrays["p0_list_faces"][0]
    np.testing.assert_array_equal(stored[:, :50], source[:, 6:56])
    np.testing.assert_array_equal(stored[:, 50:], source[:, :6])


def test_l2l_object_arrays_are_refused(tmp_path):
    write_l2l_folder(tmp_path / "x" / "train", n=1, files_dtype="O")
    assert_fails_cleanly(
        tmp_path / "x", fmt="l2l", file="speak_files", field="speak_files", reason="pickled"
    )


def test_l2l_too_few_dims(tmp_path):
    write_l2l_folder(tmp_path / "x" / "train", n=2)
    np.save(tmp_path / "x" / "train" / "p1_list_faces_clean_deca.npy", np.zeros((2, 64, 50)))
    assert_fails_cleanly(
        tmp_path / "x",
        fmt="l2l",
        file="p1_list_faces",
        field="list_faces",
        reason="need at least 56",
    )


def test_l2l_window_counts_disagree(tmp_path):
    write_l2l_folder(tmp_path / "x" / "train", n=2)
    np.save(tmp_path / "x" / "train" / "p1_speak_faces_clean_deca.npy", np.zeros((3, 64, 184)))
    assert_fails_cleanly(
        tmp_path / "x", fmt="l2l", file="p1_speak_faces", field="speak_faces", reason="3 windows"
    )


def test_l2l_nan_in_the_last_window(tmp_path):
    write_l2l_folder(tmp_path / "x" / "train", n=3)
    path = tmp_path / "x" / "train" / "p1_list_faces_clean_deca.npy"
    faces = np.load(path)
    faces[2, 5, 3] = np.nan
    np.save(path, faces)
    assert_fails_cleanly(
        tmp_path / "x",
        fmt="l2l",
        file="p1_list_faces_clean_deca.npy[2]",
        field="listener",
        reason="frame 5, dim 3",
    )


def test_l2l_missing_required_file(tmp_path):
    write_l2l_folder(tmp_path / "x" / "train", n=1)
    (tmp_path / "x" / "train" / "p1_speak_faces_clean_deca.npy").unlink()
    assert_fails_cleanly(
        tmp_path / "x", fmt="l2l", file="train", field="p1_speak_faces", reason="missing"
    )
