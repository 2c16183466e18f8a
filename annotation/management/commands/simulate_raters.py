"""Run simulated raters through a campaign (see annotation/simulation.py).

    manage.py simulate_raters --campaign demo --raters 5 --kind careful
    manage.py simulate_raters --campaign demo --raters 20 --kind noisy --url http://127.0.0.1:8000

In process (the default) the raters call the services the API views call; with ``--url`` they
are HTTP clients of a running server, one thread each, exactly like browsers.
"""

from __future__ import annotations

import random
import threading
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


class Command(BaseCommand):
    help = "Simulated raters answer a campaign through the real rating path."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--campaign", required=True, help="campaign slug")
        parser.add_argument("--raters", type=int, default=5)
        parser.add_argument("--kind", choices=KINDS, default="careful")
        parser.add_argument("--items", type=int, default=0,
                            help="answers per rater at most (default: until none is left)")
        parser.add_argument("--url", default="", help="answer over HTTP against this server")
        parser.add_argument("--seed", type=int, default=0)
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
        counts = {"stored": 0, "refused": 0}
        bar = tqdm(total=total, unit="judgment", disable=opts["no_progress"], desc="rating")

        def tally(key: str) -> None:
            with lock:
                counts[key] += 1
                if key == "stored":
                    bar.update(1)

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
        self.stdout.write(self.style.SUCCESS(
            f"{opts['raters']} {opts['kind']} raters stored {counts['stored']} judgments "
            f"({counts['refused']} refused)"))

    def _in_process(self, campaign, token, rater: Rater, limit: int, tally) -> None:
        user = invite_accept(token=token).rater
        for _ in range(limit):
            result = assignments_next(rater=user, campaign_slug=campaign.slug)
            if result.state != "rating":
                return
            lease = result.assignments[0]
            body = rater.answer(str(lease.token), ask_strength=campaign.ask_strength)
            try:
                judgment_submit(rater=user, token=str(lease.token), **body)
                tally("stored")
            except LeaseError:
                tally("refused")

    def _over_http(self, campaign, token, rater: Rater, limit: int, url: str, tally) -> None:
        client = HttpTransport(url)
        try:
            client.join(reverse("annotation:invite", args=[token]),
                        participant=f"sim-{rater.rng.getrandbits(48):x}",
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
                res = client.submit(lease, body)
                tally("stored" if res.status_code in (200, 201) else "refused")
        finally:
            client.close()
