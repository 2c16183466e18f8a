from django.conf import settings
from django.db import models

from rendering.layouts import layout_names


class Split(models.TextChoices):
    TRAIN = "train"  # used for fitting policies and critics
    VAL = "val"  # model selection during training
    TEST = "test"  # held out: benchmark metrics and campaigns only


class Dataset(models.Model):
    """A corpus of episodes in one face-model layout."""

    name = models.SlugField(max_length=100, unique=True)
    face_model = models.CharField(
        max_length=40, choices=[(n, n) for n in layout_names()], help_text="action layout"
    )
    description = models.TextField(blank=True)
    source_format = models.CharField(max_length=40, help_text="importer that created it")
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )

    def __str__(self) -> str:
        return self.name


class Episode(models.Model):
    """One speaker segment and the listener's ground truth.

    Arrays are float32 ``.npy`` blobs addressed by sha256 (``rendering.blobs``); only the hashes
    live here. ``content_hash`` covers every stream and the metadata, so importing the same files
    twice finds every episode already present.
    """

    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="episodes")
    key = models.CharField(max_length=200, help_text="the episode's id inside its dataset")
    split = models.CharField(max_length=8, choices=Split.choices, default=Split.TRAIN)
    fps = models.FloatField()
    n_frames = models.PositiveIntegerField()
    content_hash = models.CharField(max_length=64)
    listener_sha = models.CharField(max_length=64, help_text="(T, D) ground-truth listener")
    # Set where the corpus keeps a rule-following listener beside a ground truth that breaks the
    # rules (a mixed synthetic corpus): held-out metrics are measured against it.
    reference_sha = models.CharField(
        max_length=64, blank=True, help_text="(T, D) rule-following listener, where kept"
    )
    speaker_sha = models.CharField(max_length=64, blank=True, help_text="(T, D) speaker")
    audio_sha = models.CharField(max_length=64, blank=True, help_text="(N,) mono waveform")
    audio_sample_rate = models.PositiveIntegerField(null=True, blank=True)
    audio_features_sha = models.CharField(
        max_length=64, blank=True, help_text="precomputed audio features, e.g. L2L mel (F, 128)"
    )
    video_sha = models.CharField(max_length=64, blank=True, help_text="speaker video file")
    video_ext = models.CharField(max_length=8, blank=True)
    transcript = models.JSONField(
        null=True, blank=True, help_text='[{"word": str, "start": s, "end": s}, …]'
    )
    meta = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["dataset", "key"], name="episode_key_unique"),
            models.UniqueConstraint(
                fields=["dataset", "content_hash"], name="episode_content_unique"
            ),
        ]
        indexes = [models.Index(fields=["dataset", "split"])]

    def __str__(self) -> str:
        return f"{self.dataset.name}/{self.key}"

    @property
    def duration_s(self) -> float:
        return self.n_frames / self.fps


class ImportFormat(models.TextChoices):
    BACKCHANNEL = "backchannel"  # the project's own manifest layout (docs/corpus_format.md)
    L2L = "l2l"  # Learning-to-Listen DECA arrays


class JobStatus(models.TextChoices):
    QUEUED = "queued"  # waiting for a worker
    RUNNING = "running"  # claimed by a worker
    SUCCEEDED = "succeeded"  # finished; result fields are filled
    FAILED = "failed"  # finished with an error; nothing was stored


class Job(models.Model):
    """What every worker-run job records: its state, progress for the page, and who and when.
    A worker claims a job by the conditional update QUEUED -> RUNNING."""

    status = models.CharField(max_length=12, choices=JobStatus.choices, default=JobStatus.QUEUED)
    progress = models.FloatField(default=0.0, help_text="percent")
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True


class DatasetImport(Job):
    """An uploaded corpus archive, imported by a worker on the ``default`` queue."""

    upload = models.FileField(upload_to="imports/%Y/%m/")
    format = models.CharField(max_length=20, choices=ImportFormat.choices)
    dataset_name = models.SlugField(max_length=100, blank=True)
    dataset = models.ForeignKey(Dataset, null=True, blank=True, on_delete=models.SET_NULL)
    episodes_created = models.PositiveIntegerField(default=0)
    episodes_existing = models.PositiveIntegerField(default=0)

    def __str__(self) -> str:
        return f"import #{self.pk} ({self.format}, {self.status})"


class VersionStatus(models.TextChoices):
    CANDIDATE = "candidate"  # trained and evaluated, not serving
    PROMOTED = "promoted"  # the lineage's current policy (at most one per lineage)
    RETIRED = "retired"  # replaced or rolled back; kept for lineage and exports


class PolicyVersion(models.Model):
    """An immutable checkpoint: every candidate and judgment traces back to one of these."""

    name = models.SlugField(max_length=100, unique=True)
    lineage = models.SlugField(max_length=100, default="main")
    checkpoint_sha = models.CharField(max_length=64, unique=True, help_text="sha256 of the .pt")
    config = models.JSONField(help_text="model and training configuration")
    tokenizer = models.JSONField(help_text="action tokenizer summary (layout, bins, edges hash)")
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="children"
    )
    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="policies")
    training_data = models.JSONField(
        default=dict, help_text="what it was trained on: splits, episode count, snapshot hash"
    )
    metrics = models.JSONField(default=dict, blank=True)
    status = models.CharField(
        max_length=12, choices=VersionStatus.choices, default=VersionStatus.CANDIDATE
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["lineage"],
                condition=models.Q(status="promoted"),
                name="one_promoted_version_per_lineage",
            )
        ]

    def __str__(self) -> str:
        return self.name


class RunKind(models.TextChoices):
    SFT = "sft"  # supervised fine-tuning on a corpus
    CRITIC = "critic"  # reward model on a preference snapshot
    DPO = "dpo"  # preference optimisation against a frozen reference


class TrainingRun(Job):
    kind = models.CharField(max_length=8, choices=RunKind.choices, default=RunKind.SFT)
    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="training_runs")
    config = models.JSONField(default=dict)
    parent_version = models.ForeignKey(
        PolicyVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    output_version = models.ForeignKey(
        PolicyVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="runs"
    )
    version_name = models.SlugField(max_length=100, blank=True)
    loss_curve = models.JSONField(default=list, blank=True, help_text="[[step, loss], …]")
    log = models.TextField(blank=True)

    def __str__(self) -> str:
        return f"{self.kind} run #{self.pk} ({self.status})"


class CandidateSource(models.TextChoices):
    POLICY = "policy"  # sampled from a policy version
    GROUND_TRUTH = "ground_truth"  # the episode's own listener
    BASELINE = "baseline"  # a reference response (see policy/ml/baselines.py)


class Candidate(models.Model):
    """One listener sequence for one episode, with where it came from. Raters never see the
    source; exports and training do."""

    episode = models.ForeignKey(Episode, on_delete=models.CASCADE, related_name="candidates")
    source = models.CharField(max_length=16, choices=CandidateSource.choices)
    policy_version = models.ForeignKey(
        PolicyVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="candidates"
    )
    baseline = models.CharField(max_length=40, blank=True)
    seed = models.BigIntegerField(null=True, blank=True)
    temperature = models.FloatField(null=True, blank=True)
    top_p = models.FloatField(null=True, blank=True)
    # One string naming the source completely, so a retried generation finds its own rows.
    source_key = models.CharField(max_length=200)
    array_sha = models.CharField(max_length=64, help_text="(T, D) float32 in the dataset layout")
    n_frames = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["episode", "source_key"], name="candidate_unique")
        ]

    def __str__(self) -> str:
        return f"{self.episode} ← {self.source_key}"


class CandidateJob(Job):
    """Candidates for a set of episodes from one policy version, made by a ``gpu`` worker.

    The episodes are a split of the version's dataset (``split``, at most ``limit`` of them in
    key order) or the episodes of ``episode_ids``. Running it stores only the candidates that
    are missing, so a job asked again, or resumed after its worker died, samples nothing twice.
    """

    SPLITS = [*Split.choices, ("all", "All splits")]

    version = models.ForeignKey(
        PolicyVersion, on_delete=models.PROTECT, related_name="candidate_jobs"
    )
    split = models.CharField(
        max_length=8, blank=True, choices=SPLITS, help_text="empty: the episodes of episode_ids"
    )
    limit = models.PositiveIntegerField(null=True, blank=True, help_text="of the split, by key")
    episode_ids = models.JSONField(default=list, blank=True, help_text="when no split is given")
    k = models.PositiveSmallIntegerField(default=4, help_text="samples per episode")
    temperature = models.FloatField(default=1.0)
    top_p = models.FloatField(default=1.0)
    seed = models.BigIntegerField(default=0)
    ground_truth = models.BooleanField(default=True, help_text="also store the ground truth")
    baselines = models.JSONField(default=list, blank=True, help_text='e.g. ["mirror"]')
    episodes_total = models.PositiveIntegerField(default=0, help_text="episodes selected")
    candidates_created = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(k__gte=1, temperature__gte=0, top_p__gt=0, top_p__lte=1),
                name="candidate_job_sampling_settings",
            )
        ]

    def __str__(self) -> str:
        return f"candidate job #{self.pk} ({self.status})"
