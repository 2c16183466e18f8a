from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from policy.importers import ImportProblem
from policy.services.synthetic import synthetic_corpus_create, synthetic_corpus_write


class Command(BaseCommand):
    help = (
        "Generate the synthetic dyadic corpus (speakers with transcripts and audio, listeners "
        "that follow documented social rules) and store it as a dataset, or write it as files."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--episodes", type=int, default=200)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--name", default="synthetic")
        parser.add_argument(
            "--out", type=Path, help="write a folder in the corpus format instead of importing"
        )
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args: object, **opts: object) -> None:
        n, seed, name = opts["episodes"], opts["seed"], opts["name"]
        if n < 1:
            raise CommandError("--episodes must be at least 1")
        if opts["out"]:
            count = synthetic_corpus_write(episodes=n, seed=seed, name=name, out=opts["out"])
            self.stdout.write(f"wrote {count} episodes to {opts['out']}")
            return
        with tqdm(total=n, unit="ep", desc=name, disable=bool(opts["no_progress"])) as bar:
            try:
                result = synthetic_corpus_create(
                    episodes=n,
                    seed=seed,
                    name=name,
                    progress=lambda done, total: bar.update(done - bar.n),
                )
            except ImportProblem as exc:
                raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"dataset {result.dataset.name}: {result.created} episodes created, "
            f"{result.existing} already present ({result.seconds:.1f} s)"
        )
