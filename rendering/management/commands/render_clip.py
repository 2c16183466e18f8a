"""Render one clip from a ``.npy`` expression sequence (or queue it for a render worker).

    manage.py render_clip listener.npy --face-model builtin --fps 30 --out clip.mp4
    manage.py render_clip speaker.npy --speaker --audio speech.wav --transcript words.json
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from django.core.files.storage import default_storage
from django.core.management.base import BaseCommand, CommandError

from rendering import blobs
from rendering.encode import MediaInputError, read_audio
from rendering.models import ClipKind, ClipStatus
from rendering.renderer import RenderSettings
from rendering.services import ClipRequestError, SpeakerInputs, clip_render, clip_request


class Command(BaseCommand):
    help = __doc__.splitlines()[0]

    def add_arguments(self, parser) -> None:
        parser.add_argument("sequence", nargs="?", help="(T, D) float32 .npy expression sequence")
        parser.add_argument("--face-model", default="builtin")
        parser.add_argument("--fps", type=float, default=30.0)
        parser.add_argument("--size", type=int, default=256, help="frame width and height")
        parser.add_argument("--out", help="also copy the MP4 here")
        parser.add_argument("--queue", action="store_true",
                            help="only queue the job for a render worker")
        parser.add_argument("--speaker", action="store_true", help="render as a speaker clip")
        parser.add_argument("--video", help="speaker clip from this video (no sequence)")
        parser.add_argument("--audio", help="speaker audio: .wav, or .npy with --sample-rate")
        parser.add_argument("--sample-rate", type=int)
        parser.add_argument("--transcript", help='JSON [{"word", "start", "end"}, …]')
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args, **opts) -> None:
        speaker = None
        sequence = None
        if opts["sequence"]:
            path = Path(opts["sequence"])
            try:
                sequence = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise CommandError(f"{path}: not a readable .npy file ({exc})") from exc
        if opts["speaker"] or opts["video"] or opts["audio"] or opts["transcript"]:
            speaker = self._speaker_inputs(opts)
        try:
            clip = clip_request(
                face_model=opts["face_model"], fps=opts["fps"], sequence=sequence,
                settings=RenderSettings(width=opts["size"], height=opts["size"]),
                kind=ClipKind.SPEAKER if speaker is not None else ClipKind.CANDIDATE,
                speaker=speaker, enqueue=opts["queue"],
            )
        except (ClipRequestError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"clip #{clip.pk} {clip.content_hash[:12]} ({clip.status})")
        if opts["queue"]:
            return
        if clip.status == ClipStatus.QUEUED:
            self._render(clip.pk, clip.n_frames, quiet=opts["no_progress"])
        clip.refresh_from_db()
        if clip.status != ClipStatus.SUCCEEDED:
            raise CommandError(f"clip #{clip.pk} {clip.status}: {clip.error}")
        if clip.clipped:
            self.stdout.write(self.style.WARNING(
                f"{clip.clipped['n_values']} value(s) outside the face model's range were "
                f"clipped: {', '.join(clip.clipped['dims'])}"))
        name = blobs.blob_name(clip.mp4_sha, "mp4")
        self.stdout.write(self.style.SUCCESS(f"{clip.n_frames} frames -> {name}"))
        if opts["out"]:
            with default_storage.open(name, "rb") as src, open(opts["out"], "wb") as dst:
                shutil.copyfileobj(src, dst)
            self.stdout.write(f"copied to {opts['out']}")

    def _render(self, clip_id: int, total: int, *, quiet: bool) -> None:
        from tqdm import tqdm

        with tqdm(total=total or None, unit="frame", disable=quiet, desc="render") as bar:
            clip_render(clip_id=clip_id, progress=lambda done, n: bar.update(done - bar.n))

    def _speaker_inputs(self, opts) -> SpeakerInputs:
        audio_sha, rate = "", None
        if opts["audio"]:
            try:
                samples, rate = read_audio(opts["audio"])
            except MediaInputError as exc:
                raise CommandError(str(exc)) from exc
            rate = rate or opts["sample_rate"]
            if not rate:
                raise CommandError("--sample-rate is required with a .npy audio file")
            audio_sha, _ = blobs.put_array(np.asarray(samples, np.float32).reshape(-1))
        words = None
        if opts["transcript"]:
            try:
                words = json.loads(Path(opts["transcript"]).read_text())
            except (OSError, ValueError) as exc:
                raise CommandError(f"{opts['transcript']}: not readable JSON ({exc})") from exc
        video_sha = video_ext = ""
        if opts["video"]:
            path = Path(opts["video"])
            video_ext = path.suffix.lower().lstrip(".")
            try:
                video_sha, _ = blobs.put_blob(path.read_bytes(), video_ext)
            except (OSError, ValueError) as exc:
                raise CommandError(f"{path}: {exc}") from exc
        return SpeakerInputs(audio_sha=audio_sha, sample_rate=rate, transcript=words,
                             video_sha=video_sha, video_ext=video_ext)
