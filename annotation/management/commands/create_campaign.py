"""Make a rating campaign from candidates that exist, optionally render its clips here and start.

    manage.py create_campaign --slug pilot --name "Pilot" --dataset synthetic \
        --source policy:sft-demo:2 --source ground_truth --source baseline:mirror \
        --split test --limit 6 --overlap 3 --render --start --invite

Sources: ``policy:<version>[:<samples>]``, ``ground_truth``, ``baseline:<name>``. Without
``--render`` the clips are rendered by the ``render`` workers; start the campaign when they are
done (campaign page, API or ``--start`` on a later run with ``--if-missing``). Settings, status
and deletion afterwards: ``manage.py change_campaign``. Every write goes through
``annotation.services.campaigns``.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from django.urls import reverse

from annotation.models import Campaign
from annotation.services.campaigns import (
    CampaignError,
    campaign_clip_ids,
    campaign_create,
    campaign_set_status,
    invite_create,
)
from policy.models import Dataset
from rendering.models import Clip, ClipStatus


def parse_source(text: str) -> dict:
    kind, _, rest = text.partition(":")
    if kind == "policy":
        name, _, samples = rest.partition(":")
        try:
            return {"kind": "policy", "version": name, "samples": int(samples or 1)}
        except ValueError:
            raise CommandError(f"--source {text}: samples must be a number") from None
    if kind == "ground_truth" and not rest:
        return {"kind": "ground_truth"}
    if kind == "baseline" and rest:
        return {"kind": "baseline", "name": rest}
    raise CommandError(f"--source {text}: expected policy:<version>[:<samples>], ground_truth "
                       "or baseline:<name>")


class Command(BaseCommand):
    help = "Make a rating campaign (and optionally render its clips, start it, invite raters)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--slug", required=True)
        parser.add_argument("--name", default="")
        parser.add_argument("--dataset", required=True)
        parser.add_argument("--source", action="append", required=True, dest="sources")
        parser.add_argument("--split", default="test")
        parser.add_argument("--limit", type=int, default=0, help="episodes at most")
        parser.add_argument("--protocol", default="pairwise", choices=["pairwise", "group"])
        parser.add_argument("--group-size", type=int, default=5)
        parser.add_argument("--overlap", type=int, default=3)
        parser.add_argument("--target-items", type=int, default=100)
        parser.add_argument("--per-rater-limit", type=int, default=50)
        parser.add_argument("--gold-rate", type=float, default=0.1)
        parser.add_argument("--catch-rate", type=float, default=0.05)
        parser.add_argument("--repeat-rate", type=float, default=0.05)
        parser.add_argument("--instructions", default="")
        parser.add_argument("--consent", default="")
        parser.add_argument("--reasons", default="", help="comma-separated reason tags")
        parser.add_argument("--render", action="store_true",
                            help="render the clips in this process (progress bar)")
        parser.add_argument("--start", action="store_true")
        parser.add_argument("--invite", action="store_true", help="print an invite link")
        parser.add_argument("--base-url", default="http://127.0.0.1:8000")
        parser.add_argument("--if-missing", action="store_true",
                            help="use the campaign with this slug if it exists")
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args, **opts) -> None:
        campaign = Campaign.objects.filter(slug=opts["slug"]).first()
        if campaign is not None and not opts["if_missing"]:
            raise CommandError(f"a campaign {opts['slug']!r} exists already (--if-missing "
                               "to use it)")
        if campaign is None:
            campaign = self._create(opts)
        if opts["render"]:
            self._render(campaign, quiet=opts["no_progress"])
        if opts["start"] and campaign.status != "active":
            try:
                campaign = campaign_set_status(campaign=campaign, status="active")
            except CampaignError as exc:
                raise CommandError(str(exc)) from exc
            self.stdout.write(f"campaign {campaign.slug} is active")
        if opts["invite"]:
            invite = invite_create(campaign=campaign, label="command line")
            url = opts["base_url"].rstrip("/") + reverse("annotation:invite",
                                                         args=[invite.token])
            self.stdout.write(f"invite: {url}")

    def _create(self, opts) -> Campaign:
        dataset = Dataset.objects.filter(name=opts["dataset"]).first()
        if dataset is None:
            raise CommandError(f"no dataset {opts['dataset']!r}")
        episodes = list(dataset.episodes.filter(split=opts["split"]).order_by("key"))
        if opts["limit"]:
            episodes = episodes[: opts["limit"]]
        try:
            build = campaign_create(
                name=opts["name"] or opts["slug"], slug=opts["slug"], dataset=dataset,
                sources=[parse_source(s) for s in opts["sources"]], episodes=episodes,
                protocol=opts["protocol"], group_size=opts["group_size"],
                overlap=opts["overlap"], target_items=opts["target_items"],
                per_rater_limit=opts["per_rater_limit"], gold_rate=opts["gold_rate"],
                catch_rate=opts["catch_rate"], repeat_rate=opts["repeat_rate"],
                instructions=opts["instructions"], consent_text=opts["consent"],
                reason_tags=[r.strip() for r in opts["reasons"].split(",") if r.strip()],
            )
        except CampaignError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"campaign {build.campaign.slug}: {build.items} items, {build.gold} "
                          f"gold, {build.catch} catch, {build.clips} candidate clips")
        for line in build.skipped[:10]:
            self.stdout.write(self.style.WARNING(f"skipped {line}"))
        return build.campaign

    def _render(self, campaign: Campaign, *, quiet: bool) -> None:
        from tqdm import tqdm

        from rendering.services import clip_render

        ids = campaign_clip_ids(campaign)
        todo = list(Clip.objects.filter(pk__in=ids, status=ClipStatus.QUEUED)
                    .values_list("pk", flat=True))
        for clip_id in tqdm(todo, unit="clip", desc="render", disable=quiet):
            clip_render(clip_id=clip_id)
        failed = Clip.objects.filter(pk__in=ids, status=ClipStatus.FAILED).count()
        if failed:
            raise CommandError(f"{failed} clips failed to render (see the admin's clip list)")
