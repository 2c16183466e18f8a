import json

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from policy.models import Dataset, JobStatus, TrainingRun
from policy.services.training import (
    PRESETS,
    TrainingError,
    training_run_execute,
    training_run_request,
)


class Command(BaseCommand):
    help = (
        "Train an SFT policy on a dataset and register it as a policy version. Runs here with a "
        "progress bar, or with --queue on a gpu worker (follow it in the admin)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dataset", required=True)
        parser.add_argument("--name", required=True, help="the new policy version's name")
        parser.add_argument("--preset", choices=PRESETS, default="demo")
        parser.add_argument("--steps", type=int, help="optimiser steps (overrides the preset)")
        parser.add_argument("--config", help='JSON: {"model": {...}, "train": {...}}')
        parser.add_argument("--queue", action="store_true", help="enqueue on the gpu queue")
        parser.add_argument(
            "--if-missing",
            action="store_true",
            help="do nothing when a version with this name exists",
        )
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args: object, **opts: object) -> None:
        from policy.models import PolicyVersion

        if opts["if_missing"] and PolicyVersion.objects.filter(name=opts["name"]).exists():
            self.stdout.write(f"policy version {opts['name']} exists: nothing to do")
            return
        dataset = Dataset.objects.filter(name=opts["dataset"]).first()
        if dataset is None:
            raise CommandError(f"no dataset named {opts['dataset']!r}")
        try:
            config = json.loads(opts["config"]) if opts["config"] else {}
        except json.JSONDecodeError as exc:
            raise CommandError(f"--config is not valid JSON: {exc}") from exc
        config["preset"] = opts["preset"]
        if opts["steps"]:
            config.setdefault("train", {})["max_steps"] = opts["steps"]
        try:
            run = training_run_request(
                dataset=dataset, version_name=opts["name"], config=config, enqueue=opts["queue"]
            )
        except TrainingError as exc:
            raise CommandError(str(exc)) from exc
        if opts["queue"]:
            self.stdout.write(f"training run #{run.pk} queued on the gpu queue")
            return
        with tqdm(total=0, unit="step", desc="sft", disable=bool(opts["no_progress"])) as bar:

            def hook(step: int, total: int, losses: dict) -> None:
                bar.total = total
                bar.set_postfix(loss=f"{losses.get('loss', float('nan')):.3f}")
                bar.update(step - bar.n)

            version = training_run_execute(run_id=run.pk, progress_hook=hook)
        run.refresh_from_db()
        if run.status != JobStatus.SUCCEEDED or version is None:
            raise CommandError(f"training run #{run.pk} failed: {run.error}")
        self.stdout.write(self._summary(run, version))

    def _summary(self, run: TrainingRun, version) -> str:
        lines = [
            f"policy version {version.name} ({version.checkpoint_sha[:12]}) from run #{run.pk}"
        ]
        sources = version.metrics.get("sources", {})
        for name, m in sources.items():
            oracle = m.get("oracle")
            lines.append(
                f"  {name:18s} L2 expr {m.get('l2_expression', float('nan')):.4f}  "
                f"FD {m.get('fd', float('nan')):.3f}"
                + (f"  oracle {oracle:.3f}" if oracle is not None else "")
            )
        return "\n".join(lines)
