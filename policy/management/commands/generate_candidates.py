from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from policy.models import JobStatus, PolicyVersion
from policy.services.candidate_jobs import SPLITS, candidate_job_create, candidate_job_run


class Command(BaseCommand):
    help = (
        "Sample K candidates per episode from a policy version (only what is missing). Runs here "
        "with a progress bar, or with --queue on a gpu worker (follow the job in the admin)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        # "--version" names the policy version here; it replaces Django's version flag.
        for container in (parser, *parser._action_groups):
            container.conflict_handler = "resolve"
        parser.add_argument("--version", required=True, help="policy version name")
        parser.add_argument(
            "--episodes",
            default="test",
            help="a split (train / val / test / all) or comma-separated episode keys",
        )
        parser.add_argument("--limit", type=int, help="at most this many episodes")
        parser.add_argument("--k", type=int, default=4)
        parser.add_argument("--temperature", type=float, default=1.0)
        parser.add_argument("--top-p", type=float, default=1.0)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--no-ground-truth", action="store_true")
        parser.add_argument("--baselines", default="", help="e.g. nearest_neighbour,mirror")
        parser.add_argument("--queue", action="store_true", help="enqueue on the gpu queue")
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args: object, **opts: object) -> None:
        version = (
            PolicyVersion.objects.select_related("dataset").filter(name=opts["version"]).first()
        )
        if version is None:
            raise CommandError(f"no policy version named {opts['version']!r}")
        which = str(opts["episodes"])
        selection: dict = {}
        if which in SPLITS:
            selection = {"split": which, "limit": opts["limit"]}
        else:
            keys = [k.strip() for k in which.split(",") if k.strip()]
            episodes = list(version.dataset.episodes.filter(key__in=keys).order_by("key"))
            missing = set(keys) - {e.key for e in episodes}
            if missing:
                raise CommandError(f"no such episodes in {version.dataset.name}: {sorted(missing)}")
            if opts["limit"] is not None:
                episodes = episodes[: opts["limit"]]
            selection = {"episodes": episodes}
        try:
            job = candidate_job_create(
                version=version,
                **selection,
                k=opts["k"],
                temperature=opts["temperature"],
                top_p=opts["top_p"],
                seed=opts["seed"],
                ground_truth=not opts["no_ground_truth"],
                baselines=[b for b in str(opts["baselines"]).split(",") if b],
                enqueue=bool(opts["queue"]),
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        if opts["queue"]:
            self.stdout.write(f"candidate job #{job.pk} queued on the gpu queue")
            return
        with tqdm(total=0, unit="ep", desc="sample", disable=bool(opts["no_progress"])) as bar:

            def hook(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            candidate_job_run(job_id=job.pk, progress=hook)
        job.refresh_from_db()
        if job.status != JobStatus.SUCCEEDED:
            raise CommandError(f"candidate job #{job.pk} failed: {job.error}")
        self.stdout.write(
            f"{job.candidates_created} candidates created for {job.episodes_total} episodes "
            f"of {version.dataset.name}"
        )
