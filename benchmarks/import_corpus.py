"""Import 1,000 synthetic episodes from files in the project's layout, then import them again.

    python -m benchmarks.import_corpus [--episodes 1000] [--seed 0] [--naive-episodes 200]

Uses PostgreSQL when ``DATABASE_URL`` names it (or a local server answers on 127.0.0.1:5432),
in a fresh, throw-away database; media goes to a temporary folder. Compared in the same run with
the loop a user would write by hand: one ``Model.objects.create`` and one ``storage.save`` per
array, in a transaction per episode, no content hashing.
Results: benchmarks/results/import_corpus.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _configure_environment(media_root: str) -> None:
    if "DATABASE_URL" not in os.environ:
        try:
            socket.create_connection(("127.0.0.1", 5432), timeout=1).close()
            os.environ["DATABASE_URL"] = "postgres://postgres@127.0.0.1:5432/backchannel"
        except OSError:
            pass  # the embedded default (SQLite)
    os.environ.setdefault("SECRET_KEY", "benchmark-only")
    os.environ["MEDIA_ROOT"] = media_root
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")


def naive_import(folder: Path, dataset_name: str) -> int:
    """What a user would write without the platform's importer."""
    import numpy as np
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage
    from django.db import transaction

    from policy.models import Dataset, Episode

    manifest = json.loads((folder / "manifest.json").read_text())
    dataset = Dataset.objects.create(name=dataset_name, face_model=manifest["face_model"])
    for entry in manifest["episodes"]:
        with transaction.atomic():
            fields = {}
            for stream in ("listener", "speaker", "audio"):
                data = (folder / entry[stream]).read_bytes()
                array = np.load(folder / entry[stream])
                if not np.isfinite(array).all():
                    raise ValueError(entry[stream])
                fields[f"{stream}_sha"] = default_storage.save(
                    f"naive/{entry['key']}/{stream}.npy", ContentFile(data)
                )[:64]
            transcript = json.loads((folder / entry["transcript"]).read_text())
            Episode.objects.create(
                dataset=dataset,
                key=entry["key"],
                split=entry["split"],
                fps=entry["fps"],
                n_frames=int(np.load(folder / entry["listener"]).shape[0]),
                content_hash=entry["key"],
                audio_sample_rate=entry["audio_sample_rate"],
                transcript=transcript,
                meta=entry.get("meta", {}),
                **fields,
            )
    return len(manifest["episodes"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--naive-episodes", type=int, default=200)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        tmp_path = Path(tmp)
        _configure_environment(str(tmp_path / "media"))
        import django

        django.setup()
        from django.db import connection
        from tqdm import tqdm

        from policy.services.datasets import dataset_import
        from policy.services.synthetic import synthetic_corpus_write

        t0 = time.perf_counter()
        corpus = tmp_path / "corpus"
        synthetic_corpus_write(episodes=args.episodes, seed=args.seed, name="bench", out=corpus)
        generate_s = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in corpus.rglob("*") if p.is_file())

        old_name = connection.settings_dict["NAME"]
        connection.creation.create_test_db(verbosity=0, autoclobber=True, keepdb=False)
        try:
            with tqdm(total=args.episodes, unit="ep", desc="first import") as bar:
                first = dataset_import(
                    path=corpus,
                    fmt="backchannel",
                    progress=lambda done, total: bar.update(done - bar.n),
                )
            t0 = time.perf_counter()
            second = dataset_import(path=corpus, fmt="backchannel")
            second_s = time.perf_counter() - t0

            naive_dir = tmp_path / "naive-corpus"
            synthetic_corpus_write(
                episodes=args.naive_episodes, seed=args.seed, name="naive", out=naive_dir
            )
            t0 = time.perf_counter()
            naive_n = naive_import(naive_dir, "naive")
            naive_s = time.perf_counter() - t0
            engine = connection.vendor
        finally:
            connection.creation.destroy_test_db(old_name, verbosity=0)

    first_rate = first.created / first.seconds
    naive_rate = naive_n / naive_s
    result = {
        "benchmark": "import_corpus",
        "machine": {
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
        },
        "database": engine,
        "inputs": {"episodes": args.episodes, "seed": args.seed, "bytes": size},
        "generate_files_s": round(generate_s, 2),
        "first_import": {
            "seconds": round(first.seconds, 2),
            "episodes_created": first.created,
            "files_written": first.blobs_written,
            "episodes_per_s": round(first_rate, 1),
            "mb_per_s": round(size / 1e6 / first.seconds, 1),
        },
        "second_import": {
            "seconds": round(second_s, 2),
            "episodes_created": second.created,
            "episodes_existing": second.existing,
            "files_written": second.blobs_written,
        },
        "naive_loop": {
            "episodes": naive_n,
            "seconds": round(naive_s, 2),
            "episodes_per_s": round(naive_rate, 1),
            "note": "create() + storage.save() per array, transaction per episode, no dedup",
        },
        "speedup_vs_naive": round(first_rate / naive_rate, 2),
        "goal": "1,000 episodes in under 60 s; second import a no-op",
        "goal_met": first.seconds < 60 and second.created == 0 and second.blobs_written == 0,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "import_corpus.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nimport_corpus on {engine}, {args.episodes} episodes ({size / 1e6:.0f} MB)")
    print(
        f"  first import   {first.seconds:7.2f} s   {first_rate:7.1f} ep/s   "
        f"{first.blobs_written} files written"
    )
    print(
        f"  second import  {second_s:7.2f} s   created {second.created}, "
        f"written {second.blobs_written} (no-op)"
    )
    print(f"  naive loop     {naive_s:7.2f} s   {naive_rate:7.1f} ep/s   ({naive_n} episodes)")
    print(f"  speed-up vs naive: {result['speedup_vs_naive']}x; goal met: {result['goal_met']}")
    print(f"  -> {RESULTS / 'import_corpus.json'}")


if __name__ == "__main__":
    main()
