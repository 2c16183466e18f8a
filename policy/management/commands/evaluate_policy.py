import json

from django.core.management.base import BaseCommand, CommandError, CommandParser

from policy.models import PolicyVersion
from policy.services.training import policy_version_evaluate


class Command(BaseCommand):
    help = "Benchmark metrics of a policy version and the baselines on its corpus's test split."

    def add_arguments(self, parser: CommandParser) -> None:
        # "--version" names the policy version here; it replaces Django's version flag.
        for container in (parser, *parser._action_groups):
            container.conflict_handler = "resolve"
        parser.add_argument("--version", required=True, help="policy version name")
        parser.add_argument("--episodes", type=int, default=64, help="test episodes to use")
        parser.add_argument("--json", action="store_true", help="print the metrics as JSON")

    def handle(self, *args: object, **opts: object) -> None:
        version = (
            PolicyVersion.objects.select_related("dataset").filter(name=opts["version"]).first()
        )
        if version is None:
            raise CommandError(f"no policy version named {opts['version']!r}")
        metrics = policy_version_evaluate(version=version, limit=opts["episodes"])
        if opts["json"]:
            self.stdout.write(json.dumps(metrics, indent=2))
            return
        sources = metrics.get("sources", {})
        if not sources:
            raise CommandError(metrics.get("note", "nothing evaluated"))
        names = sorted({k for m in sources.values() for k in m})
        self.stdout.write(f"{'source':18s}" + "".join(f"{n[:12]:>13s}" for n in names))
        for source, m in sources.items():
            cells = "".join(
                f"{m[n]:13.4f}" if isinstance(m.get(n), int | float) else f"{'—':>13s}"
                for n in names
            )
            self.stdout.write(f"{source:18s}{cells}")
