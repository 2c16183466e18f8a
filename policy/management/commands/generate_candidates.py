from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from policy.models import PolicyVersion
from policy.services.candidates import candidates_generate


class Command(BaseCommand):
    help = "Sample K candidates per episode from a policy version (only what is missing)."

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
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args: object, **opts: object) -> None:
        version = (
            PolicyVersion.objects.select_related("dataset").filter(name=opts["version"]).first()
        )
        if version is None:
            raise CommandError(f"no policy version named {opts['version']!r}")
        episodes = version.dataset.episodes.order_by("key")
        which = str(opts["episodes"])
        if which in ("train", "val", "test"):
            episodes = episodes.filter(split=which)
        elif which != "all":
            keys = [k.strip() for k in which.split(",") if k.strip()]
            episodes = episodes.filter(key__in=keys)
            missing = set(keys) - set(episodes.values_list("key", flat=True))
            if missing:
                raise CommandError(f"no such episodes in {version.dataset.name}: {sorted(missing)}")
        if opts["limit"]:
            episodes = episodes[: opts["limit"]]
        episodes = list(episodes)
        if not episodes:
            raise CommandError("no episodes selected")
        baselines = [b for b in str(opts["baselines"]).split(",") if b]
        with tqdm(
            total=len(episodes), unit="ep", desc="sample", disable=bool(opts["no_progress"])
        ) as bar:
            try:
                created = candidates_generate(
                    version=version,
                    episodes=episodes,
                    k=opts["k"],
                    temperature=opts["temperature"],
                    top_p=opts["top_p"],
                    seed=opts["seed"],
                    ground_truth=not opts["no_ground_truth"],
                    baselines=baselines,
                    progress=lambda done, total: bar.update(done - bar.n),
                )
            except ValueError as exc:
                raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"{created} candidates created for {len(episodes)} episodes of {version.dataset.name}"
        )
