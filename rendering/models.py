"""Clips: rendered videos addressed by the hash of what went into them, and their render jobs."""

import uuid

from django.db import models


class ClipKind(models.TextChoices):
    CANDIDATE = "candidate"  # a listener sequence on the neutral face
    SPEAKER = "speaker"  # the speaker: own video transcoded, or rendered in the speaker colour


class ClipStatus(models.TextChoices):
    QUEUED = "queued"  # waiting for a render worker
    RUNNING = "running"  # claimed by a worker
    SUCCEEDED = "succeeded"  # the MP4 and the poster are stored
    FAILED = "failed"  # finished with an error; nothing was stored


class Clip(models.Model):
    """One rendered video.

    ``content_hash`` is the sha256 of everything that decides the pixels and sound: the
    sequence bytes, the face model and its geometry, the render settings, the fps and, for
    speaker clips, the audio, transcript and source video. Asking twice for the same clip finds
    the same row. ``public_id`` is the only handle that leaves the server (in signed URLs): it
    says nothing about the candidate, its policy or the episode.
    """

    content_hash = models.CharField(max_length=64, unique=True)
    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    kind = models.CharField(max_length=12, choices=ClipKind.choices, default=ClipKind.CANDIDATE)
    face_model = models.CharField(max_length=40, help_text="rig / layout name")
    rig_fingerprint = models.CharField(max_length=64, blank=True)
    sequence_sha = models.CharField(
        max_length=64, blank=True, help_text="(T, D) float32 .npy blob; blank for a transcode"
    )
    fps = models.FloatField()
    n_frames = models.PositiveIntegerField(default=0)
    settings = models.JSONField(help_text="render settings (rendering.renderer.RenderSettings)")
    media = models.JSONField(
        default=dict, blank=True,
        help_text="speaker inputs: audio_sha, sample_rate, transcript, video_sha, video_ext",
    )
    status = models.CharField(
        max_length=12, choices=ClipStatus.choices, default=ClipStatus.QUEUED, db_index=True
    )
    progress = models.FloatField(default=0.0, help_text="percent")
    error = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    mp4_sha = models.CharField(max_length=64, blank=True)
    poster_sha = models.CharField(max_length=64, blank=True)
    mp4_bytes = models.PositiveBigIntegerField(default=0)
    clipped = models.JSONField(
        null=True, blank=True,
        help_text="values outside the face model's range that were clipped, per dimension",
    )
    render_seconds = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(
        null=True, blank=True,
        help_text="last sign of life of the worker rendering it (running clips only)")
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["status", "created_at"])]
        constraints = [
            models.CheckConstraint(
                condition=~models.Q(status="succeeded") | (~models.Q(mp4_sha="")
                                                           & ~models.Q(poster_sha="")),
                name="clip_succeeded_has_files",
            ),
        ]

    def __str__(self) -> str:
        return f"clip #{self.pk} ({self.kind}, {self.face_model}, {self.status})"

    @property
    def duration_s(self) -> float:
        return self.n_frames / self.fps if self.fps else 0.0
