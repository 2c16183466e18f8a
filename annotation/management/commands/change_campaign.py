"""Change a campaign's settings or status, or delete it, through the same services as the API.

    manage.py change_campaign pilot --set per_rater_limit=40 --set 'reason_tags=["timing"]'
    manage.py change_campaign pilot --status paused
    manage.py change_campaign pilot --delete

A ``--set`` value is read as JSON where it is JSON (numbers, true/false, lists, objects) and as
text otherwise; quote it as a JSON string to keep text that looks like a number
(``--set 'name="2025"'``). Nothing changes if any setting is refused.
"""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from annotation import parsers
from annotation.models import Campaign, CampaignStatus
from annotation.services.campaigns import (
    CampaignError,
    campaign_delete,
    campaign_set_status,
    campaign_update,
)


def parse_setting(text: str) -> tuple[str, object]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise CommandError(f"--set {text}: expected FIELD=VALUE")
    try:
        value = parsers.loads(raw)
    except parsers.TooDeep:
        raise CommandError(f"--set {key.strip()}: {parsers.TOO_DEEP}") from None
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


class Command(BaseCommand):
    help = "Change a campaign's settings or status, or delete it (the services' rules apply)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("slug")
        parser.add_argument("--set", action="append", default=[], dest="changes",
                            metavar="FIELD=VALUE")
        parser.add_argument("--status", choices=CampaignStatus.values)
        parser.add_argument("--delete", action="store_true",
                            help="delete the campaign (refused once it has judgments)")

    def handle(self, *args, **opts) -> None:
        campaign = Campaign.objects.filter(slug=opts["slug"]).first()
        if campaign is None:
            raise CommandError(f"no campaign {opts['slug']!r}")
        if opts["delete"] and (opts["changes"] or opts["status"]):
            raise CommandError("--delete goes alone")
        changes = dict(parse_setting(s) for s in opts["changes"])
        if "campaign" in changes:
            raise CommandError("campaign: is not a campaign setting")
        try:
            if opts["delete"]:
                campaign_delete(campaign=campaign)
                self.stdout.write(f"campaign {campaign.slug} deleted")
                return
            # Settings and status together or not at all.
            with transaction.atomic():
                if changes:
                    campaign = campaign_update(campaign=campaign, **changes)
                if opts["status"]:
                    campaign = campaign_set_status(campaign=campaign, status=opts["status"])
        except CampaignError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"campaign {campaign.slug} is {campaign.status}"
                          + (f"; changed {', '.join(sorted(changes))}" if changes else ""))
