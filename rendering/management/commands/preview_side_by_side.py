"""Write one MP4 with N candidates next to the speaker, for slides and checking by eye.

    manage.py preview_side_by_side --speaker speaker.npy --candidate sft=a.npy \
        --candidate dpo=b.npy --audio speech.wav --transcript words.json --out preview.mp4

The speaker is its video (``--speaker-video``) or its sequence drawn in the speaker colour;
each candidate is drawn on the neutral face; the audio plays and the transcript is burned in.
Files only: nothing is stored in the database.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from django.core.management.base import BaseCommand, CommandError

from rendering.encode import EncodeError, MediaInputError, read_audio
from rendering.pipeline import SpeakerMedia, side_by_side
from rendering.renderer import SPEAKER_BLUE, RenderError, RenderSettings, select_gl_platform
from rendering.rigs import CoefficientError, RigError, get_rig


class Command(BaseCommand):
    help = __doc__.splitlines()[0]

    def add_arguments(self, parser) -> None:
        parser.add_argument("--candidate", action="append", default=[], metavar="LABEL=PATH",
                            help="a (T, D) .npy sequence; repeat for each candidate")
        parser.add_argument("--speaker", help="the speaker's (T, D) .npy sequence")
        parser.add_argument("--speaker-video", help="the speaker's own video instead")
        parser.add_argument("--speaker-face-model", help="face model of --speaker "
                            "(default: --face-model)")
        parser.add_argument("--face-model", default="builtin")
        parser.add_argument("--fps", type=float, default=30.0)
        parser.add_argument("--size", type=int, default=256)
        parser.add_argument("--audio", help=".wav, or .npy with --sample-rate")
        parser.add_argument("--sample-rate", type=int)
        parser.add_argument("--transcript", help='JSON [{"word", "start", "end"}, …]')
        parser.add_argument("--out", required=True)
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args, **opts) -> None:
        from django.conf import settings as django_settings
        from tqdm import tqdm

        if not opts["candidate"]:
            raise CommandError("give at least one --candidate LABEL=PATH")
        try:
            select_gl_platform(django_settings.RENDER_GL_PLATFORM or None)
            rig = get_rig(opts["face_model"])
            size = RenderSettings(width=opts["size"], height=opts["size"])
            panels = []
            if opts["speaker"] and not opts["speaker_video"]:
                speaker_rig = get_rig(opts["speaker_face_model"] or opts["face_model"])
                panels.append(("speaker", speaker_rig, self._load(opts["speaker"]),
                               size.replace(face_color=SPEAKER_BLUE)))
            for item in opts["candidate"]:
                label, sep, path = item.partition("=")
                if not sep:
                    label, path = Path(item).stem, item
                panels.append((label, rig, self._load(path), size))
            media = self._media(opts)
            with tqdm(unit="frame", disable=opts["no_progress"], desc="preview") as bar:
                def progress(done: int, total: int) -> None:
                    bar.total = total
                    bar.update(done - bar.n)

                out = side_by_side(panels=panels, fps=opts["fps"], out_path=opts["out"],
                                   media=media, speaker_video=opts["speaker_video"],
                                   progress=progress)
        except (CoefficientError, RigError, MediaInputError, EncodeError, RenderError,
                ValueError) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(self.style.SUCCESS(
            f"{out.n_frames} frames, {len(panels) + bool(opts['speaker_video'])} panels -> "
            f"{opts['out']}"))

    def _load(self, path: str) -> np.ndarray:
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise CommandError(f"{path}: not a readable .npy file ({exc})") from exc

    def _media(self, opts) -> SpeakerMedia | None:
        audio = rate = words = None
        if opts["audio"]:
            audio, rate = read_audio(opts["audio"])
            rate = rate or opts["sample_rate"]
            if not rate:
                raise CommandError("--sample-rate is required with a .npy audio file")
        if opts["transcript"]:
            try:
                words = json.loads(Path(opts["transcript"]).read_text())
            except (OSError, ValueError) as exc:
                raise CommandError(f"{opts['transcript']}: not readable JSON ({exc})") from exc
        if audio is None and words is None:
            return None
        return SpeakerMedia(audio=audio, sample_rate=rate, transcript=words)
