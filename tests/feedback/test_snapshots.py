"""Snapshots of a real small campaign: answered through the rating path, exported, read back with
``datasets`` and ``pyarrow``."""

from __future__ import annotations

import fcntl
import io
import json
import os
import tarfile
import threading
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from django.core.files.storage import default_storage
from django.core.management import call_command
from django.db import connection
from django.urls import reverse

from annotation.models import CRITERIA, Enrollment, ItemMember, Judgment
from annotation.rules import group_pairs
from annotation.services.judgments import judgment_submit
from annotation.services.ordering import source_label
from annotation.services.scheduling import assignments_next
from feedback import export
from feedback.models import Snapshot
from feedback.services import snapshots as service
from feedback.services.snapshots import (
    SnapshotError,
    snapshot_folder,
    snapshot_make,
    snapshot_request,
    snapshots_root,
)
from feedback.tasks_snapshots import snapshot_make_task
from policy.models import Dataset, JobStatus
from rendering.blobs import blob_name
from tests.annotation.conftest import enrol, make_campaign, make_corpus

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

CHOICES = ["left", "right", "tie", "left", "both_bad", "right", "left"]
PLAYBACK = {"events": [{"t": 10, "e": "play", "v": 0}], "plays": 2, "pauses": 1, "seeks": 0,
            "stalls": 1, "quality": [None]}


def answer_all(campaign, raters) -> int:
    """Every rater answers every item they are served, through the rating path."""
    n = 0
    for user in raters:
        for _ in range(200):
            leases = assignments_next(rater=user, campaign_slug=campaign.slug).assignments
            if not leases:
                break
            a = leases[0]
            if campaign.protocol == "group":
                values = [3] * len(a.order) if n % 4 == 3 else [
                    1 + (n + 2 * i) % 5 for i in range(len(a.order))]
                body: dict = {"scores": [dict.fromkeys(CRITERIA, v) for v in values]}
            else:
                choice = CHOICES[n % len(CHOICES)]
                body = {"choice": choice,
                        "strength": 1 + n % 3 if choice in ("left", "right") else None,
                        "reasons": ["timing"] if n % 2 else []}
            judgment_submit(rater=user, token=str(a.token), idempotency_key=uuid.uuid4(),
                            decision_ms=800 + n, viewing_ms=2000, playback=PLAYBACK, **body)
            n += 1
    return n


@pytest.fixture
def study(corpus, researcher):
    campaign = make_campaign(corpus, created_by=researcher, reason_tags=["timing"])
    raters = enrol(campaign, 3)
    assert answer_all(campaign, raters) > 10
    return campaign, raters


def make(filters: dict, **kw) -> Snapshot:
    """A snapshot made here, as ``export_preferences`` makes it."""
    s = snapshot_request(filters=filters, user=None, enqueue=False, **kw)
    snapshot_make(snapshot_id=s.pk)
    s.refresh_from_db()
    return s


def table(folder: Path, config: str, split: str | None = None):
    pattern = f"{split}-*.parquet" if split else "*.parquet"
    files = sorted((folder / "data" / config).glob(pattern))
    return pq.ParquetDataset(files).read() if files else None


def test_pairs_load_with_datasets_and_pyarrow_with_the_documented_rows(study, tmp_path):
    campaign, _ = study
    regular = Judgment.objects.filter(campaign=campaign, probe="none")
    decisive = regular.filter(outcome__in=["a", "b"])
    # when
    s = make({"campaigns": [campaign.slug], "qc": "all", "test_fraction": 0.5})
    # then
    assert s.status == JobStatus.SUCCEEDED, s.error
    folder = snapshot_folder(s)
    assert folder == snapshots_root() / s.content_hash
    pairs = table(folder, "pairs")
    train, test = table(folder, "pairs", "train"), table(folder, "pairs", "test")
    assert (train.num_rows if train else 0) + (test.num_rows if test else 0) == decisive.count()
    assert table(folder, "pairs", "tie").num_rows == regular.filter(outcome="tie").count()
    assert table(folder, "pairs", "both_bad").num_rows == regular.filter(
        outcome="both_bad").count()
    assert pairs.num_rows == regular.count()
    assert table(folder, "judgments").num_rows == Judgment.objects.filter(
        campaign=campaign).count()
    assert table(folder, "unpaired").num_rows == 2 * decisive.count() + 2 * regular.filter(
        outcome="both_bad").count()
    assert s.counts["pairs"] == {split: n for split, n in sorted(
        {"train": train.num_rows if train else 0, "test": test.num_rows if test else 0,
         "tie": regular.filter(outcome="tie").count(),
         "both_bad": regular.filter(outcome="both_bad").count()}.items()) if n}

    import datasets

    loaded = datasets.load_dataset(str(folder), "pairs", cache_dir=str(tmp_path / "hf"))
    assert sum(loaded[k].num_rows for k in loaded if k in ("train", "test")) == decisive.count()
    assert loaded["tie"].num_rows == regular.filter(outcome="tie").count()
    # every decisive row: the winner is chosen, the margin is the strength
    by_id = {j.pk: j for j in decisive.select_related("item")}
    for split in ("train", "test"):
        for row in loaded.get(split, []):
            j = by_id[row["judgment_id"]]
            slots = dict(ItemMember.objects.filter(item=j.item).values_list("slot",
                                                                             "candidate_id"))
            win, lose = (0, 1) if j.outcome == "a" else (1, 0)
            assert (row["chosen"]["candidate_id"], row["rejected"]["candidate_id"]) == (
                slots[win], slots[lose])
            assert row["margin"] == j.strength
            chosen = np.load(folder / row["chosen"]["array"])
            assert chosen.dtype == np.float32 and chosen.ndim == 2
            assert (folder / row["prompt"]["speaker_array"]).is_file()
            assert row["prompt"]["episode_key"] == j.item.episode.key
    judgments = datasets.load_dataset(str(folder), "judgments", split="train",
                                      cache_dir=str(tmp_path / "hf"))
    first = judgments[0]
    assert first["playback_plays"] == 2 and first["playback_stalls"] == 1
    assert len(first["candidate_clip_sha256"]) == 2 and len(first["render_settings_sha256"]) == 64
    # every array a row names is in the snapshot, and nothing else is
    named = set(pairs.column("chosen").combine_chunks().field("array").to_pylist())
    assert named <= {f"arrays/{p.name}" for p in (folder / "arrays").iterdir()}
    card = (folder / "README.md").read_text()
    assert "config_name: pairs" in card and "One row per decisive judgment" in card


def test_the_same_filters_twice_give_the_same_hash_and_folder(study):
    campaign, _ = study
    filters = {"campaigns": [campaign.slug], "qc": "all"}
    first = make(filters)
    # when
    second = make(filters)
    # then
    assert second.pk != first.pk
    assert second.status == first.status == JobStatus.SUCCEEDED
    assert second.content_hash == first.content_hash
    assert export.content_hash(snapshot_folder(second))[0] == second.content_hash
    assert [p.name for p in snapshots_root().iterdir()] == [first.content_hash]
    # the task again on a finished snapshot changes nothing
    snapshot_make_task(first.pk)
    again = Snapshot.objects.get(pk=first.pk)
    assert (again.content_hash, again.finished_at, again.status) == (
        first.content_hash, first.finished_at, first.status)


def test_filters_matching_nothing_are_refused_and_make_no_snapshot(study):
    campaign, _ = study
    for filters, words in [
        ({"campaigns": [campaign.slug], "since": "2999-01-01"}, "no judgment"),
        ({"campaigns": [campaign.slug], "sources": ["policy:nope"]}, "not a source"),
        ({"campaigns": ["nope"]}, "no campaign 'nope'"),
        ({"campaigns": [campaign.slug], "qc": "some"}, "qc"),
    ]:
        with pytest.raises(SnapshotError, match=words):
            snapshot_request(filters=filters, user=None)
    assert not Snapshot.objects.exists()


def test_a_source_filter_keeps_items_of_those_sources_only(study):
    campaign, _ = study
    keep = ["baseline:jitter", "ground_truth"]
    s = make({"campaigns": [campaign.slug], "qc": "all", "sources": keep})
    judgments = table(snapshot_folder(s), "judgments").to_pylist()
    assert judgments and all(sorted(r["candidate_sources"]) == keep for r in judgments)
    expected = [j.pk for j in Judgment.objects.filter(campaign=campaign).order_by("id")
                if sorted(source_label(m.candidate) for m in j.item.members.select_related(
                    "candidate__policy_version")) == keep]
    assert [r["judgment_id"] for r in judgments] == expected
    pairs = table(snapshot_folder(s), "pairs")
    assert set(pairs.column("chosen_source").to_pylist()) <= set(keep)


def test_the_same_snapshot_asked_twice_while_in_progress_is_one_row(study):
    campaign, _ = study
    filters = {"campaigns": [campaign.slug]}
    first = snapshot_request(filters=filters, user=None, enqueue=False)
    second = snapshot_request(filters={**filters, "qc": "trusted"}, user=None, enqueue=False)
    assert first.pk == second.pk and Snapshot.objects.count() == 1
    other = snapshot_request(filters={**filters, "qc": "all"}, user=None, enqueue=False)
    assert other.pk != first.pk


@pytest.mark.django_db(transaction=True)
def test_the_same_snapshot_asked_twice_at_once_is_one_row(monkeypatch):
    campaign = make_campaign(make_corpus(episodes=3), reason_tags=["timing"])
    answer_all(campaign, enrol(campaign, 1))
    # given: both requests find nothing in progress and insert at the same moment
    barrier = threading.Barrier(2)
    seen = threading.local()
    original = service.request._in_progress

    def racing(key: str):
        if not getattr(seen, "once", False):
            seen.once = True
            barrier.wait(10)
            return None
        return original(key)

    monkeypatch.setattr(service.request, "_in_progress", racing)
    got, errors = [], []

    def ask() -> None:
        try:
            got.append(snapshot_request(filters={"campaigns": [campaign.slug]}, user=None,
                                        enqueue=False).pk)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    # when
    threads = [threading.Thread(target=ask) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    # then
    assert not errors and len(got) == 2 and got[0] == got[1]
    assert Snapshot.objects.count() == 1


def test_a_killed_export_lists_nothing_and_its_folder_is_cleaned(study, monkeypatch):
    campaign, _ = study
    calls = {"n": 0}
    write = export.ConfigWriter.write

    def dies(self, split, cols):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("worker killed")
        return write(self, split, cols)

    monkeypatch.setattr(export.ConfigWriter, "write", dies)
    s = snapshot_request(filters={"campaigns": [campaign.slug]}, user=None, enqueue=False)
    # when
    with pytest.raises(RuntimeError, match="killed"):
        snapshot_make(snapshot_id=s.pk)
    # then
    s.refresh_from_db()
    assert s.status == JobStatus.FAILED and "killed" in s.error
    assert snapshot_folder(s) is None and list(snapshots_root().iterdir()) == []
    # a worker killed outright leaves its temporary folder (and its lock, which the system
    # releases): the next run removes it, and leaves alone the folder of one still writing
    monkeypatch.setattr(export.ConfigWriter, "write", write)
    root = snapshots_root()
    for name in (f".tmp-{s.pk}-dead", ".tmp-999-killed", ".tmp-998-writing"):
        (root / name / "data").mkdir(parents=True)
        (root / name / "data" / "half.parquet.part").write_bytes(b"PAR1")
        (root / f"{name}.lock").touch()
    writing = os.open(root / ".tmp-998-writing.lock", os.O_RDWR)
    fcntl.flock(writing, fcntl.LOCK_EX)
    try:
        done = make({"campaigns": [campaign.slug], "qc": "all"})
    finally:
        os.close(writing)
    assert done.status == JobStatus.SUCCEEDED
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [done.content_hash, ".tmp-998-writing", ".tmp-998-writing.lock"])


def test_a_missing_candidate_array_fails_the_job_naming_it(study):
    campaign, _ = study
    judged = Judgment.objects.filter(campaign=campaign).first()
    member = ItemMember.objects.filter(item=judged.item, candidate__source="baseline").first()
    candidate = member.candidate
    default_storage.delete(blob_name(candidate.array_sha, "npy"))
    s = snapshot_request(filters={"campaigns": [campaign.slug]}, user=None, enqueue=False)
    # when
    snapshot_make(snapshot_id=s.pk)
    # then
    s.refresh_from_db()
    assert s.status == JobStatus.FAILED
    assert f"candidate #{candidate.pk}" in s.error and candidate.array_sha in s.error
    assert list(snapshots_root().iterdir()) == []


def test_campaigns_of_different_face_layouts_are_refused(study):
    campaign, _ = study
    other = make_campaign(make_corpus(episodes=2, seed=12), slug="other")
    Dataset.objects.filter(pk=other.dataset_id).update(face_model="flame56")
    with pytest.raises(SnapshotError, match="different face layouts"):
        snapshot_request(filters={"campaigns": [campaign.slug, other.slug]}, user=None)
    assert not Snapshot.objects.exists()


def test_train_and_test_never_share_an_episode(study):
    campaign, _ = study
    s = make({"campaigns": [campaign.slug], "qc": "all", "test_fraction": 0.5})
    folder = snapshot_folder(s)
    keys = {}
    for config in ("pairs", "unpaired"):
        for split in ("train", "test"):
            t = table(folder, config, split)
            prompts = t.column("prompt").combine_chunks() if t is not None else None
            keys[(config, split)] = set(
                prompts.field("episode_key").to_pylist()) if prompts is not None else set()
    # every split has rows (with a test fraction of one half), so the checks below see some
    assert all(keys.values()), {k: len(v) for k, v in keys.items()}
    assert not keys[("pairs", "train")] & keys[("pairs", "test")]
    assert not keys[("unpaired", "train")] & keys[("unpaired", "test")]
    dataset = campaign.dataset.name
    for (_, split), found in keys.items():
        assert all(export.episode_split(dataset, k, 0.5) == split for k in found)
    # ties carry their episode's split too
    ties = table(folder, "pairs", "tie")
    assert ties is not None and ties.num_rows
    assert set(ties.column("episode_split").to_pylist()) <= {"train", "test"}


def test_raters_appear_only_as_pseudonyms(study):
    campaign, raters = study
    s = make({"campaigns": [campaign.slug], "qc": "all"})
    folder = snapshot_folder(s)
    pseudonyms = {str(p) for p in Enrollment.objects.filter(campaign=campaign).values_list(
        "pseudonym", flat=True)}
    for config in ("judgments", "pairs", "unpaired"):
        t = table(folder, config)
        assert not {"rater_id", "user", "user_id", "username"} & set(t.column_names)
        assert set(t.column("rater").to_pylist()) <= pseudonyms
    raters_table = table(folder, "raters")
    if raters_table is not None and raters_table.num_rows:
        assert set(raters_table.column("rater").to_pylist()) <= pseudonyms
    # no account name anywhere: every row of every config, and the card
    text = (folder / "README.md").read_text() + json.dumps(
        [table(folder, c).to_pylist() for c in export.CONFIGS], default=str)
    assert raters and all(user.username not in text for user in raters)


def test_group_judgments_give_their_best_vs_worst_pair(corpus):
    campaign = make_campaign(corpus, protocol="group", group_size=3)
    answer_all(campaign, enrol(campaign, 2))
    s = make({"campaigns": [campaign.slug], "qc": "all"})
    assert s.status == JobStatus.SUCCEEDED, s.error
    folder = snapshot_folder(s)
    rows = [r for split in ("train", "test") if (t := table(folder, "pairs", split))
            for r in t.to_pylist()]
    ties = table(folder, "pairs", "tie")
    judgments = {j.pk: j for j in Judgment.objects.filter(campaign=campaign)}
    assert len(rows) + (ties.num_rows if ties else 0) == len(judgments)
    assert ties is not None and ties.num_rows  # the all-3 answers
    for row in rows:
        j = judgments[row["judgment_id"]]
        best, worst, margin = group_pairs(j.scores, campaign.weights)[0]
        slots = dict(ItemMember.objects.filter(item=j.item).values_list("slot", "candidate_id"))
        assert (row["chosen"]["candidate_id"], row["rejected"]["candidate_id"]) == (
            slots[best], slots[worst])
        assert row["margin"] == pytest.approx(margin)


# --- the API, the page, the command -------------------------------------------------------------

def test_the_api_makes_follows_and_streams_a_snapshot(study, client, researcher,
                                                      django_capture_on_commit_callbacks):
    campaign, _ = study
    client.force_login(researcher)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        reply = client.post("/api/snapshots/", {"campaigns": [campaign.slug], "qc": "all"},
                            content_type="application/json")
    assert reply.status_code == 202, reply.content
    sid = reply.json()["id"]
    assert len(callbacks) == 1 and reply.json()["status"] == "queued"
    # when: the worker runs the task (twice: a redelivery does nothing)
    snapshot_make_task(sid)
    snapshot_make_task(sid)
    # then
    body = client.get(f"/api/snapshots/{sid}/").json()
    assert body["status"] == "succeeded" and body["progress"] == 100.0
    assert body["counts"]["judgments"]["train"] == Judgment.objects.filter(
        campaign=campaign).count()
    folder = snapshots_root() / body["content_hash"]
    files = export.snapshot_files(folder)
    reply = client.get(body["archive"])
    assert reply.status_code == 200 and reply["Content-Type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(b"".join(reply.streaming_content)), mode="r:gz") as tar:
        names = [m.name.split("/", 1)[1] for m in tar.getmembers()]
        readme = tar.extractfile(next(m for m in tar.getmembers()
                                      if m.name.endswith("/README.md"))).read()
    assert names == files and readme == (folder / "README.md").read_bytes()
    reply = client.get(body["archive"] + "?type=zip")
    with zipfile.ZipFile(io.BytesIO(b"".join(reply.streaming_content))) as zf:
        assert zf.testzip() is None
        assert [n.split("/", 1)[1] for n in zf.namelist()] == files
    assert [s["id"] for s in client.get("/api/snapshots/").json()] == [sid]
    page = client.get("/snapshots/")
    assert page.status_code == 200 and body["content_hash"][:12].encode() in page.content
    assert client.get(f"/snapshots/{sid}/").status_code == 200


def test_raters_get_403_and_researchers_see_only_their_campaigns(study, client):
    campaign, raters = study
    client.force_login(raters[0])
    assert client.post("/api/snapshots/", {"campaigns": [campaign.slug]},
                       content_type="application/json").status_code == 403
    assert client.get("/api/snapshots/").status_code == 403
    assert client.get("/snapshots/").status_code == 403
    s = make({"campaigns": [campaign.slug]})
    assert client.get(f"/api/snapshots/{s.pk}/archive/").status_code == 403
    # another researcher, who may not see the campaign
    from django.contrib.auth import get_user_model

    from annotation.roles import RESEARCHER, role_add

    stranger = get_user_model().objects.create_user("stranger", password="pw-str-1234")
    role_add(stranger, RESEARCHER)
    client.force_login(stranger)
    reply = client.post("/api/snapshots/", {"campaigns": [campaign.slug]},
                        content_type="application/json")
    assert reply.status_code == 400 and "no campaign" in reply.json()["detail"]
    assert client.get(f"/api/snapshots/{s.pk}/").status_code == 404
    assert client.get(f"/api/snapshots/{s.pk}/archive/").status_code == 404
    assert client.get("/api/snapshots/").json() == []


def test_the_command_writes_the_snapshot_to_a_folder(study, tmp_path):
    campaign, _ = study
    out = tmp_path / "export"
    call_command("export_preferences", "--campaign", campaign.slug, "--qc", "all",
                 "--out", str(out), "--no-progress", stdout=io.StringIO())
    s = Snapshot.objects.get()
    assert s.status == JobStatus.SUCCEEDED
    assert export.content_hash(out)[0] == s.content_hash
    assert (out / "README.md").is_file() and list((out / "data" / "pairs").glob("*.parquet"))


def test_the_page_lists_snapshots_and_asks_for_one(study, client, researcher,
                                                   django_capture_on_commit_callbacks):
    campaign, _ = study
    client.force_login(researcher)
    page = client.get(reverse("feedback:snapshots"))
    assert page.status_code == 200 and f'value="{campaign.slug}"'.encode() in page.content
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        reply = client.post(reverse("feedback:snapshots"), {
            "campaigns": [campaign.slug], "qc": "all", "test_fraction": "0.2"})
    s = Snapshot.objects.get()
    assert reply.status_code == 302
    assert reply["Location"] == reverse("feedback:snapshot", kwargs={"snapshot_id": s.pk})
    assert len(callbacks) == 1 and s.filters["test_fraction"] == 0.2
    assert b"0.0 %" in client.get(reverse("feedback:snapshots")).content  # queued: its share
    # filters that keep nothing are refused on the form, saying why
    reply = client.post(reverse("feedback:snapshots"), {
        "campaigns": [campaign.slug], "qc": "all", "since": "2999-01-01 00:00",
        "test_fraction": "0.1"})
    assert reply.status_code == 200 and b"no judgment" in reply.content
    assert Snapshot.objects.count() == 1


def test_odd_playback_evidence_is_left_out_not_fatal(corpus):
    # given: the page's evidence is checked for size only; counters may be anything
    campaign = make_campaign(corpus)
    user = enrol(campaign, 1)[0]
    odd = {"events": [], "plays": "1\t2", "pauses": 1e12, "stalls": "3", "seeks": 2,
           "holds": [1], "replays": {"n": 1}}
    for _ in range(3):
        a = assignments_next(rater=user, campaign_slug=campaign.slug).assignments[0]
        judgment_submit(rater=user, token=str(a.token), idempotency_key=uuid.uuid4(),
                        choice="left", strength=1, decision_ms=500, playback=odd)
    # when
    s = make({"campaigns": [campaign.slug], "qc": "all"})
    # then
    assert s.status == JobStatus.SUCCEEDED, s.error
    row = table(snapshot_folder(s), "judgments").to_pylist()[0]
    assert (row["playback_seeks"], row["playback_stalls"]) == (2, 3)  # a count, or its text
    assert [row[f"playback_{p}"] for p in ("plays", "pauses", "holds", "replays")] == [None] * 4
