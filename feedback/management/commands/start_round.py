"""Start a retraining round over campaigns' judgments, from the lineage's promoted version.

    manage.py start_round --campaign demo                  # the workers run it; prints its page
    manage.py start_round --campaign demo --here           # every step in this process
    manage.py start_round --campaign demo --here --promote # and promote its version
    manage.py start_round --campaign demo --config '{"method": "critic", "min_pairs": 20}'

Without ``--here`` the steps run on the workers (``default`` and ``gpu`` queues) and the round's
page follows them. With ``--here`` they run in this process with a progress bar; the round is
the same row either way.
"""

from __future__ import annotations

import json
import sys

from django.core.management.base import BaseCommand, CommandError
from django.urls import reverse

from annotation.models import Campaign
from feedback.models import ROUND_STEPS, RoundStatus
from feedback.services.rounds import RoundError, round_promote, round_run_here, round_start


class Command(BaseCommand):
    help = "Start a retraining round (snapshot, critic, optimisation, evaluation, version)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--campaign", action="append", required=True,
                            help="campaign slug (repeat for several)")
        parser.add_argument("--lineage", help="default: the lineage of the rated versions")
        parser.add_argument("--config", default="{}", help="the round's config, as JSON")
        parser.add_argument("--method", help="shorthand for config.method")
        parser.add_argument("--min-pairs", type=int, help="shorthand for config.min_pairs")
        parser.add_argument("--here", action="store_true", help="run every step in this process")
        parser.add_argument("--promote", action="store_true",
                            help="with --here: promote the new version when the round waits")
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args, **opts) -> None:
        campaigns = list(Campaign.objects.filter(slug__in=opts["campaign"]))
        missing = sorted(set(opts["campaign"]) - {c.slug for c in campaigns})
        if missing:
            raise CommandError(f"no campaign {missing[0]!r}")
        try:
            config = json.loads(opts["config"])
        except ValueError as exc:
            raise CommandError(f"--config is not JSON: {exc}") from None
        if not isinstance(config, dict):
            raise CommandError("--config must be a JSON object")
        if opts["method"]:
            config["method"] = opts["method"]
        if opts["min_pairs"] is not None:
            config["min_pairs"] = opts["min_pairs"]
        try:
            rnd = round_start(campaigns=campaigns, config=config, trigger="command",
                              lineage=opts["lineage"], enqueue=not opts["here"])
        except RoundError as exc:
            raise CommandError(str(exc)) from None
        page = reverse("feedback:round", kwargs={"round_id": rnd.pk})
        self.stdout.write(f"round #{rnd.pk} from {rnd.parent.name}: {page}")
        if not opts["here"]:
            return
        show = not opts["no_progress"]

        def progress(r) -> None:
            if show:
                i = ROUND_STEPS.index(r.step) + 1
                sys.stdout.write(f"\r[{i}/{len(ROUND_STEPS)}] {r.step:<11} "
                                 f"{r.progress:5.1f} %   ")
                sys.stdout.flush()

        rnd = round_run_here(rnd.pk, progress)
        if rnd.status == RoundStatus.WAITING and opts["promote"]:
            rnd = round_promote(rnd=rnd, enqueue=False)
            rnd = round_run_here(rnd.pk, progress)
        if show:
            sys.stdout.write("\n")
        self.stdout.write(f"round #{rnd.pk}: {rnd.status}"
                          + (f", version {rnd.output_version.name}" if rnd.output_version_id
                             else "")
                          + (f", next campaign {rnd.next_campaign.slug}"
                             if rnd.next_campaign_id else ""))
        if rnd.status == RoundStatus.FAILED:
            raise CommandError(f"round #{rnd.pk} failed at {rnd.step}: {rnd.error}")
