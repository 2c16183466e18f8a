"""Promote a policy version, or roll a lineage back to its previous promoted version (recorded).

    manage.py promote_version --name sft-demo
    manage.py promote_version --name sft-demo --if-none   # only if its lineage has none yet
    manage.py promote_version --rollback --lineage main
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from feedback.services.rounds import (
    RoundError,
    promoted_version,
    version_promote,
    version_rollback,
)
from policy.models import PolicyVersion


class Command(BaseCommand):
    help = "Promote a policy version, or roll a lineage back (each recorded)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--name", help="the policy version to promote")
        parser.add_argument("--if-none", action="store_true",
                            help="do nothing when the lineage has a promoted version already")
        parser.add_argument("--rollback", action="store_true")
        parser.add_argument("--lineage", default="main")

    def handle(self, *args, **opts) -> None:
        try:
            if opts["rollback"]:
                p = version_rollback(lineage=opts["lineage"])
                self.stdout.write(f"{p.lineage}: {p.version.name} promoted again "
                                  f"({p.previous.name} retired)")
                return
            version = PolicyVersion.objects.filter(name=opts["name"] or "").first()
            if version is None:
                raise CommandError(f"no policy version {opts['version']!r}")
            current = promoted_version(version.lineage)
            if opts["if_none"] and current is not None:
                self.stdout.write(f"{version.lineage}: {current.name} is promoted already")
                return
            p = version_promote(version=version)
        except RoundError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"{p.lineage}: {p.version.name} promoted"
                          + (f" ({p.previous.name} retired)" if p.previous_id else ""))
