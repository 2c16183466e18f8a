"""Run quality control of one campaign in this process and print the rater table.

    manage.py run_qc --campaign demo
    manage.py run_qc --campaign demo --json      # the rater table as JSON

The run is recorded (a ``QcRun`` row, decisions where a status changed) exactly as a worker
records it; a run already queued for the campaign is run here instead of by the worker.
"""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError

from annotation.models import Campaign
from feedback.services.qc import (
    QcError,
    qc_run_create,
    qc_run_execute,
    qc_thresholds,
    rater_table,
)
from policy.models import JobStatus


def _f(x, pattern: str = "{:.2f}") -> str:
    return "-" if x is None else pattern.format(x)


class Command(BaseCommand):
    help = "Quality control of one campaign, in this process; prints the rater table."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--campaign", required=True, help="campaign slug")
        parser.add_argument("--json", action="store_true", help="print the table as JSON")

    def handle(self, *args, **opts) -> None:
        campaign = Campaign.objects.filter(slug=opts["campaign"]).first()
        if campaign is None:
            raise CommandError(f"no campaign {opts['campaign']!r}")
        try:
            qc_thresholds()
        except QcError as exc:
            raise CommandError(str(exc)) from None
        run = qc_run_create(campaign=campaign, enqueue=False)
        done = qc_run_execute(run_id=run.pk)
        if done is None:
            raise CommandError(f"run #{run.pk} is running in a worker; wait for it or look at "
                               "the quality page")
        if done.status != JobStatus.SUCCEEDED:
            raise CommandError(f"run #{done.pk} failed: {done.error}")
        table = rater_table(campaign=campaign)
        if opts["json"]:
            self.stdout.write(json.dumps(table, indent=2))
            return
        c = done.summary.get("campaign", {})
        cycles = c.get("cycles", {})
        self.stdout.write(
            f"run #{done.pk}: {done.judgments_seen} judgments, "
            f"{done.summary.get('decisions_written', 0)} decisions written; agreement "
            f"{_f(c.get('agreement_decisive'))} decisive / {_f(c.get('agreement'))} all, "
            f"alpha {_f((c.get('alpha') or {}).get('nominal'))} nominal"
            + (f", {_f(c['alpha'].get('ordinal'))} ordinal" if "ordinal" in c.get("alpha", {})
               else "")
            + f"; {cycles.get('cycles', 0)} of {cycles.get('triads', 0)} triads intransitive")
        head = (f"{'rater':<8} {'n':>5} {'gold':>5} {'catch':>5} {'rep':>5} {'left':>5} "
                f"{'side p':>8} {'fast':>5} {'loo':>5} {'rel':>5}  status    source    reason")
        self.stdout.write(head)
        for r in table:
            self.stdout.write(
                f"{r['pseudonym'][:8]:<8} {r['n_judgments']:>5} {_f(r['gold_accuracy']):>5} "
                f"{_f(r['catch_accuracy']):>5} {_f(r['repeat_consistency']):>5} "
                f"{_f(r['left_share']):>5} {_f(r['side_p'], '{:.1e}'):>8} "
                f"{_f(r['fast_share']):>5} {_f(r['loo_agreement']):>5} "
                f"{_f(r['reliability']):>5}  {r['status']:<9} {r['source']:<9} {r['reason']}")
