from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from policy.importers import ImportProblem
from policy.services.synthetic import synthetic_corpus_create, synthetic_corpus_write
from policy.synthetic import LISTENER_FAULTS, MIXED_KINDS


class Command(BaseCommand):
    help = (
        "Generate the synthetic dyadic corpus (speakers with transcripts and audio, listeners "
        "that follow documented social rules) and store it as a dataset, or write it as files. "
        "With --mixed, that share of the listeners break the rules (the rule-following listener "
        "is kept beside them as the reference stream)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--episodes", type=int, default=200)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--name", default="synthetic")
        parser.add_argument(
            "--out", type=Path, help="write a folder in the corpus format instead of importing"
        )
        parser.add_argument(
            "--mixed",
            type=float,
            default=0.0,
            help="share (0-1) of episodes whose listener breaks the rules (default 0: all follow)",
        )
        parser.add_argument(
            "--mixed-kinds",
            nargs="+",
            choices=LISTENER_FAULTS,
            help=f"which rule breaks to draw from (default: {' '.join(MIXED_KINDS)})",
        )
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args: object, **opts: object) -> None:
        n, seed, name = opts["episodes"], opts["seed"], opts["name"]
        mixed, kinds = opts["mixed"], opts["mixed_kinds"]
        if n < 1:
            raise CommandError("--episodes must be at least 1")
        if not 0.0 <= mixed <= 1.0:
            raise CommandError(f"--mixed must be a share between 0 and 1, got {mixed}")
        if kinds is not None and len(set(kinds)) != len(kinds):
            raise CommandError("--mixed-kinds names a kind twice")
        if opts["out"]:
            count = synthetic_corpus_write(
                episodes=n, seed=seed, name=name, out=opts["out"], mixed=mixed, mixed_kinds=kinds
            )
            self.stdout.write(f"wrote {count} episodes to {opts['out']}")
            return
        with tqdm(total=n, unit="ep", desc=name, disable=bool(opts["no_progress"])) as bar:
            try:
                result = synthetic_corpus_create(
                    episodes=n,
                    seed=seed,
                    name=name,
                    mixed=mixed,
                    mixed_kinds=kinds,
                    progress=lambda done, total: bar.update(done - bar.n),
                )
            except ImportProblem as exc:
                raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"dataset {result.dataset.name}: {result.created} episodes created, "
            f"{result.existing} already present ({result.seconds:.1f} s)"
        )
