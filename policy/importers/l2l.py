"""The Learning-to-Listen layout (CVPR 2022), as its data release stores it.

``<channel>/<split>/p{0,1}_{list_faces,speak_faces,speak_audio,speak_files}_clean_deca.npy``:
faces are ``(N, T, 184)`` DECA vectors whose first 56 dims are 50 expression + 3 head rotation +
3 jaw (kept; the 128 detail dims are dropped), audio is a 128-bin mel at 4× the video rate
``(N, 4T, 128)``, files are ``(N, T, 3)`` source ids. The listener of ``p0`` answers the speaker of
``p1`` and vice versa, so every window gives two episodes. Video runs at 30 fps.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import PurePosixPath

import numpy as np

from rendering.layouts import FLAME56

from .errors import ImportProblem
from .records import CorpusReader, EpisodeRecord, parse_npy
from .sources import Source

FPS = 30.0
KEEP_DIMS = FLAME56.width  # 56
_FILE_RE = re.compile(r"^p([01])_(list_faces|speak_faces|speak_audio|speak_files)_clean_deca\.npy$")
_REQUIRED = ("list_faces", "speak_faces")


def _groups(source: Source) -> dict[str, dict[tuple[int, str], str]]:
    groups: dict[str, dict[tuple[int, str], str]] = defaultdict(dict)
    for rel in source.files():
        path = PurePosixPath(rel)
        match = _FILE_RE.match(path.name)
        if match:
            groups[str(path.parent)][(int(match[1]), match[2])] = rel
    if not groups:
        raise ImportProblem(
            source.root_label, "files", "no p{0,1}_*_clean_deca.npy files found (L2L layout)"
        )
    return dict(sorted(groups.items()))


def _split_of(folder: str) -> str:
    name = PurePosixPath(folder).name.lower()
    return {"train": "train", "test": "test", "val": "val", "valid": "val"}.get(name, "train")


def _key_prefix(folder: str) -> str:
    return "root" if folder in ("", ".") else folder


def read_l2l(source: Source, *, pose_first: bool = False) -> CorpusReader:
    """``pose_first``: some code bases store the 56 dims as 6 pose then 50 expression;
    such files are reordered into this platform's expression-first ``flame56`` layout."""
    groups = _groups(source)
    loaded: list[tuple[str, dict[tuple[int, str], np.ndarray]]] = []
    count = 0
    for folder, files in groups.items():
        arrays: dict[tuple[int, str], np.ndarray] = {}
        for person in (0, 1):
            for kind in _REQUIRED:
                if (person, kind) not in files:
                    raise ImportProblem(
                        source.label(folder),
                        f"p{person}_{kind}",
                        f"missing p{person}_{kind}_clean_deca.npy",
                    )
        n_windows = None
        for (person, kind), rel in sorted(files.items()):
            label = source.label(rel)
            array = parse_npy(source.read(rel), label, kind)
            expected_ndim = 3
            if array.ndim != expected_ndim:
                raise ImportProblem(label, kind, f"expected (N, T, C), got shape {array.shape}")
            if kind in _REQUIRED and array.shape[2] < KEEP_DIMS:
                raise ImportProblem(
                    label, kind, f"has {array.shape[2]} dims per frame, need at least {KEEP_DIMS}"
                )
            if kind == "speak_audio" and array.shape[2] != 128:
                raise ImportProblem(label, kind, f"expected 128 mel bins, got {array.shape[2]}")
            if n_windows is None:
                n_windows = array.shape[0]
            elif array.shape[0] != n_windows:
                raise ImportProblem(
                    label, kind, f"{array.shape[0]} windows but other files have {n_windows}"
                )
            arrays[(person, kind)] = array
        count += 2 * (n_windows or 0)
        loaded.append((folder, arrays))
    return CorpusReader(
        name="l2l",
        face_model=FLAME56.name,
        description="Learning to Listen (DECA / FLAME, 56 dims)",
        source_format="l2l",
        count=count,
        episodes=_iter_episodes(source, groups, loaded, pose_first),
    )


def _faces(array: np.ndarray, pose_first: bool) -> np.ndarray:
    faces = array[:, :KEEP_DIMS]  # (T, 56)
    if pose_first:
        faces = np.concatenate([faces[:, 6:], faces[:, :6]], axis=1)
    return faces


def _iter_episodes(
    source: Source,
    groups: dict[str, dict[tuple[int, str], str]],
    loaded: list[tuple[str, dict[tuple[int, str], np.ndarray]]],
    pose_first: bool,
) -> Iterator[EpisodeRecord]:
    for folder, arrays in loaded:
        n_windows = arrays[(0, "list_faces")].shape[0]
        channel = PurePosixPath(folder).parent.name if folder not in ("", ".") else ""
        for listener_p in (0, 1):
            speaker_p = 1 - listener_p
            list_rel = groups[folder][(listener_p, "list_faces")]
            for i in range(n_windows):
                meta: dict = {"l2l": {"folder": folder, "window": i, "listener": f"p{listener_p}"}}
                if channel:
                    meta["l2l"]["channel"] = channel
                ids = arrays.get((speaker_p, "speak_files"))
                if ids is not None and ids.ndim == 3 and ids.shape[1]:
                    meta["l2l"]["speaker_files_first"] = [str(x) for x in ids[i, 0]]
                    meta["l2l"]["speaker_files_last"] = [str(x) for x in ids[i, -1]]
                rec = EpisodeRecord(
                    key=f"{_key_prefix(folder)}/p{listener_p}-{i:05d}",
                    split=_split_of(folder),
                    fps=FPS,
                    listener=_faces(arrays[(listener_p, "list_faces")][i], pose_first),
                    label=f"{source.label(list_rel)}[{i}]",
                    speaker=_faces(arrays[(speaker_p, "speak_faces")][i], pose_first),
                    meta=meta,
                )
                mel = arrays.get((speaker_p, "speak_audio"))
                if mel is not None:
                    rec.audio_features = mel[i]  # (4T, 128)
                    meta["audio_features"] = {"kind": "mel", "bins": 128, "rate_hz": 4 * FPS}
                yield rec
