"""Run simulated raters through a campaign (see annotation/simulation.py).

    manage.py simulate_raters --campaign demo --raters 5 --kind careful
    manage.py simulate_raters --campaign demo --raters 20 --kind noisy --url http://127.0.0.1:8000

In process (the default) the raters call the services the API views call; with ``--url`` they
are HTTP clients of a running server, one thread each, exactly like browsers.

``--seed`` fixes the raters' choices, not their idempotency keys or participant ids: each run
makes new ones, so runs of any kinds can follow one another on one campaign. Refused answers are
counted by the platform's refusal code and listed after the summary.
"""

from __future__ import annotations

import logging
import random
import threading
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from django.core.management.base import BaseCommand, CommandError
from django.db import close_old_connections
from django.urls import reverse

from annotation.models import Campaign
from annotation.services.campaigns import invite_create
from annotation.services.enrollment import invite_accept
from annotation.services.judgments import judgment_submit
from annotation.services.scheduling import LeaseError, assignments_next
from annotation.simulation import KINDS, HttpTransport, Rater

logger = logging.getLogger(__name__)

SUBMIT_ATTEMPTS = 3  # over HTTP: a lost connection or a 5xx is retried with the same body (key)


class Command(BaseCommand):
    help = "Simulated raters answer a campaign through the real rating path."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--campaign", required=True, help="campaign slug")
        parser.add_argument("--raters", type=int, default=5)
        parser.add_argument("--kind", choices=KINDS, default="careful")
        parser.add_argument("--items", type=int, default=0,
                            help="answers per rater at most (default: until none is left)")
        parser.add_argument("--url", default="", help="answer over HTTP against this server")
        parser.add_argument("--seed", type=int, default=0,
                            help="fixes the raters' choices (never their idempotency keys)")
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args, **opts) -> None:
        from tqdm import tqdm

        campaign = Campaign.objects.filter(slug=opts["campaign"]).first()
        if campaign is None:
            raise CommandError(f"no campaign {opts['campaign']!r}")
        if campaign.status != "active":
            raise CommandError(f"campaign {campaign.slug} is {campaign.status}; start it first")
        if opts["raters"] < 1:
            raise CommandError("--raters must be at least 1")
        invite = invite_create(campaign=campaign, label=f"simulated {opts['kind']}")
        limit = opts["items"] or campaign.per_rater_limit
        total = opts["raters"] * limit
        lock = threading.Lock()
        stored = 0
        refused: Counter[str] = Counter()  # refusal code -> answers refused with it
        details: dict[str, str] = {}  # refusal code -> the platform's message, as first seen
        bar = tqdm(total=total, unit="judgment", disable=opts["no_progress"], desc="rating")

        def tally(refusal: tuple[str, str] | None = None) -> None:
            """One answer: stored (``None``) or refused with (code, message)."""
            nonlocal stored
            with lock:
                if refusal is None:
                    stored += 1
                    bar.update(1)
                    return
                code, detail = refusal
                refused[code] += 1
                details.setdefault(code, detail)

        def one(index: int) -> None:
            rater = Rater(opts["kind"], random.Random(opts["seed"] * 10_007 + index))
            if not opts["url"]:
                self._in_process(campaign, invite.token, rater, limit, tally)
                return
            try:
                self._over_http(campaign, invite.token, rater, limit, opts["url"], tally)
            finally:
                close_old_connections()  # this thread's connection (oracle look-ups)

        if opts["url"]:
            with ThreadPoolExecutor(max_workers=min(opts["raters"], 32)) as pool:
                list(pool.map(one, range(opts["raters"])))
        else:
            for i in range(opts["raters"]):
                one(i)
        bar.close()
        summary = (f"{opts['raters']} {opts['kind']} raters stored {stored} judgments "
                   f"({sum(refused.values())} refused)")
        self.stdout.write(self.style.WARNING(summary) if refused else self.style.SUCCESS(summary))
        for code, n in refused.most_common():
            self.stdout.write(self.style.WARNING(f"  refused {n}: {code} ({details[code]})"))

    def _in_process(self, campaign, token, rater: Rater, limit: int, tally) -> None:
        participant = _participant() if campaign.crowd_param else ""
        user = invite_accept(token=token, participant=participant).rater
        for _ in range(limit):
            result = assignments_next(rater=user, campaign_slug=campaign.slug)
            if result.state != "rating":
                return
            lease = result.assignments[0]
            body = rater.answer(str(lease.token), ask_strength=campaign.ask_strength)
            try:
                judgment_submit(rater=user, token=str(lease.token), **body)
            except LeaseError as exc:
                _log_refusal(campaign, lease.token, exc.code, exc.message)
                tally((exc.code, exc.message))
            else:
                tally()

    def _over_http(self, campaign, token, rater: Rater, limit: int, url: str, tally) -> None:
        client = HttpTransport(url)
        try:
            client.join(reverse("annotation:invite", args=[token]), participant=_participant(),
                        crowd_param=campaign.crowd_param)
            for _ in range(limit):
                res = client.next(campaign.slug)
                res.raise_for_status()
                data = res.json()
                if data["state"] != "rating":
                    return
                lease = data["assignments"][0]["id"]
                client.heartbeat(lease)
                body = rater.answer(lease, ask_strength=campaign.ask_strength)
                res = _submit(client, lease, body)
                if res.status_code in (200, 201):
                    tally()
                    continue
                code, detail = _refusal(res)
                _log_refusal(campaign, lease, code, detail)
                tally((code, detail))
        finally:
            client.close()


def _participant() -> str:
    """A crowd participant id no earlier run has used (the same id would resume that rater)."""
    return f"sim-{uuid.uuid4().hex[:12]}"


def _submit(client: HttpTransport, lease: str, body: dict):
    """Send one answer; a lost connection or a server error is retried with the same body, so the
    same idempotency key: the platform stores the answer at most once."""
    import httpx

    for _ in range(SUBMIT_ATTEMPTS - 1):
        try:
            res = client.submit(lease, body)
        except httpx.TransportError:
            continue
        if res.status_code < 500:
            return res
    return client.submit(lease, body)  # the last try: its error or its 5xx is the caller's


def _refusal(res) -> tuple[str, str]:
    """(code, message) of a refused answer: the API's ``error`` and ``detail``, or the status."""
    try:
        data = res.json()
    except ValueError:
        data = None
    if isinstance(data, dict) and data.get("error"):
        return str(data["error"]), str(data.get("detail", ""))
    return f"http_{res.status_code}", res.reason_phrase


def _log_refusal(campaign, lease, code: str, detail: str) -> None:
    logger.warning("campaign %s: a simulated answer to lease %s refused: %s (%s)",
                   campaign.slug, lease, code, detail)
