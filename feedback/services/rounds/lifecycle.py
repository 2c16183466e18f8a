"""Starting a round, and what an admin does to one: cancel, resume, promote or not, roll back.

Promotions and rollbacks are :class:`feedback.models.Promotion` rows (never edited), so a
lineage's history of promoted versions reads from the table.
"""

from __future__ import annotations

import logging

from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from annotation.models import Campaign, Enrollment, Judgment, Probe
from feedback.models import (
    Promotion,
    Round,
    RoundSchedule,
    RoundStatus,
    RoundStep,
    StepState,
    VersionAction,
)
from policy.models import PolicyVersion, VersionStatus

from .config import RoundError, round_config_clean
from .runner import append_log, enqueue_step

logger = logging.getLogger(__name__)

TRIGGERS = ("admin", "api", "command", "schedule")


def promoted_version(lineage: str) -> PolicyVersion | None:
    return (PolicyVersion.objects.select_related("dataset")
            .filter(lineage=lineage, status=VersionStatus.PROMOTED).first())


def trusted_judgments(campaigns) -> int:
    """Regular judgments of the campaigns by raters quality control has not excluded."""
    excluded = Enrollment.objects.filter(campaign=OuterRef("campaign"), rater=OuterRef("rater"),
                                         excluded=True)
    return (Judgment.objects.filter(campaign__in=list(campaigns), probe=Probe.NONE)
            .exclude(Exists(excluded)).count())


def round_start(*, campaigns: list[Campaign], user=None, config: dict | None = None,
                trigger: str = "admin", lineage: str | None = None,
                enqueue: bool = True) -> Round:
    """A new round over the campaigns' judgments, from the lineage's promoted version.

    ``lineage`` defaults to that of the newest policy version the campaigns rated. Refuses
    (``RoundError``) campaigns of several corpora, a lineage with no promoted version or one
    trained on another corpus, and a lineage that has a round open already.
    """
    if trigger not in TRIGGERS:
        raise RoundError(f"trigger must be one of {', '.join(TRIGGERS)}")
    campaigns = list(campaigns)
    if not campaigns:
        raise RoundError("campaigns: a round reads the judgments of at least one campaign")
    datasets = {c.dataset_id for c in campaigns}
    if len(datasets) > 1:
        raise RoundError("campaigns: all must rate episodes of one corpus")
    cfg = round_config_clean(config)
    if lineage is None:
        names = [s.get("version") for c in campaigns for s in c.sources
                 if s.get("kind") == "policy"]
        rated = (PolicyVersion.objects.filter(name__in=names).order_by("-created_at").first())
        lineage = rated.lineage if rated is not None else "main"
    parent = promoted_version(lineage)
    if parent is None:
        raise RoundError(f"lineage {lineage!r} has no promoted version: promote one first (a "
                         "round always starts from the promoted version)")
    if parent.dataset_id not in datasets:
        raise RoundError(f"the promoted version {parent.name} was trained on "
                         f"{parent.dataset.name}, the campaigns rate another corpus")
    try:
        with transaction.atomic():
            rnd = Round.objects.create(
                lineage=lineage, parent=parent, config=cfg, trigger=trigger, created_by=user,
                judgments_at_start=trusted_judgments(campaigns))
            rnd.campaigns.set(campaigns)
            append_log(rnd.pk, f"started by {trigger} from {parent.name} over "
                               f"{', '.join(c.slug for c in campaigns)}")
            if enqueue:
                enqueue_step(rnd.pk, RoundStep.SNAPSHOT)
    except IntegrityError:
        open_round = Round.objects.filter(lineage=lineage, status__in=[
            RoundStatus.QUEUED, RoundStatus.RUNNING, RoundStatus.WAITING]).first()
        raise RoundError(f"lineage {lineage!r} has a round open already "
                         f"(#{open_round.pk if open_round else '?'}): finish or cancel it "
                         "first") from None
    return rnd


def round_cancel(*, rnd: Round, user=None) -> Round:
    """Stop the round: a running step stops at its next progress report; nothing further runs."""
    with transaction.atomic():
        row = Round.objects.select_for_update().get(pk=rnd.pk)
        if row.status in (RoundStatus.SUCCEEDED, RoundStatus.CANCELLED):
            raise RoundError(f"round #{row.pk} is {row.status}: nothing to cancel")
        row.cancel_requested = True
        if row.step_state != StepState.RUNNING or row.status in (RoundStatus.WAITING,
                                                                  RoundStatus.FAILED):
            row.status, row.finished_at = RoundStatus.CANCELLED, timezone.now()
            row.step_state = StepState.DONE
        row.save(update_fields=["cancel_requested", "status", "finished_at", "step_state"])
    append_log(rnd.pk, f"cancel asked by {getattr(user, 'username', None) or 'the platform'}")
    return row


def round_resume(*, rnd: Round, user=None, enqueue: bool = True) -> Round:
    """Run a failed round's step again; it resumes from that step's last checkpoint."""
    with transaction.atomic():
        row = Round.objects.select_for_update().get(pk=rnd.pk)
        if row.status != RoundStatus.FAILED:
            raise RoundError(f"round #{row.pk} is {row.status}; only a failed round resumes")
        try:
            with transaction.atomic():
                Round.objects.filter(pk=row.pk).update(
                    status=RoundStatus.RUNNING, step_state=StepState.QUEUED, error="",
                    finished_at=None)
        except IntegrityError:
            raise RoundError(f"lineage {row.lineage!r} has another round open") from None
        append_log(row.pk, f"{row.step}: resumed by "
                           f"{getattr(user, 'username', None) or 'the platform'}")
        if enqueue:
            enqueue_step(row.pk, row.step)
    row.refresh_from_db()
    return row


@transaction.atomic
def version_promote(*, version: PolicyVersion, user=None, rnd: Round | None = None,
                    automatic: bool = False, action: str = VersionAction.PROMOTE,
                    ) -> Promotion:
    """Make ``version`` its lineage's promoted version (the one before it is retired), and
    record it. A retired version comes back only through :func:`version_rollback`."""
    locked = PolicyVersion.objects.select_for_update().get(pk=version.pk)
    if locked.status == VersionStatus.RETIRED and action != VersionAction.ROLLBACK:
        raise RoundError(f"{locked.name} is retired; roll back to it instead")
    previous = PolicyVersion.objects.filter(lineage=locked.lineage,
                                            status=VersionStatus.PROMOTED).first()
    if previous is not None and previous.pk == locked.pk:
        raise RoundError(f"{locked.name} is promoted already")
    if previous is not None:
        PolicyVersion.objects.filter(pk=previous.pk).update(status=VersionStatus.RETIRED)
    locked.status = VersionStatus.PROMOTED
    locked.save(update_fields=["status"])
    return Promotion.objects.create(lineage=locked.lineage, action=action, version=locked,
                                    previous=previous, round=rnd, automatic=automatic, by=user)


@transaction.atomic
def version_rollback(*, lineage: str, user=None) -> Promotion:
    """Promote again the version the current one replaced when it was promoted."""
    current = promoted_version(lineage)
    if current is None:
        raise RoundError(f"lineage {lineage!r} has no promoted version")
    # The promotion that made the current version serve in the first place (a rollback to it
    # is not one: rolling back twice goes further back, never forward again).
    last = (Promotion.objects.filter(lineage=lineage, version=current,
                                     action=VersionAction.PROMOTE)
            .order_by("-at", "-pk").first())
    if last is None or last.previous_id is None:
        raise RoundError(f"{current.name} has no earlier promoted version to roll back to")
    return version_promote(version=last.previous, user=user, action=VersionAction.ROLLBACK)


def round_promote(*, rnd: Round, user=None, enqueue: bool = True) -> Round:
    """An admin's click on a waiting round: promote its version and go on to the next step."""
    with transaction.atomic():
        row = Round.objects.select_for_update().get(pk=rnd.pk)
        if row.status != RoundStatus.WAITING or row.output_version_id is None:
            raise RoundError(f"round #{row.pk} is {row.status}: it is not waiting for a "
                             "promotion")
        version_promote(version=row.output_version, user=user, rnd=row)
        append_log(row.pk, f"promoted {row.output_version.name} "
                           f"(by {getattr(user, 'username', None) or 'the platform'})")
        _after_promotion(row, enqueue)
    row.refresh_from_db()
    return row


def _after_promotion(row: Round, enqueue: bool = True) -> None:
    if row.config["next_campaign"]["create"]:
        Round.objects.filter(pk=row.pk).update(status=RoundStatus.RUNNING,
                                               step=RoundStep.CANDIDATES,
                                               step_state=StepState.QUEUED)
        if enqueue:
            enqueue_step(row.pk, RoundStep.CANDIDATES)
    else:
        Round.objects.filter(pk=row.pk).update(status=RoundStatus.SUCCEEDED,
                                               step_state=StepState.DONE, progress=100.0,
                                               finished_at=timezone.now())


def round_decline(*, rnd: Round, user=None) -> Round:
    """An admin's "keep the parent": the round ends with its version registered, unpromoted."""
    with transaction.atomic():
        row = Round.objects.select_for_update().get(pk=rnd.pk)
        if row.status != RoundStatus.WAITING:
            raise RoundError(f"round #{row.pk} is {row.status}: it is not waiting for a "
                             "promotion")
        Round.objects.filter(pk=row.pk).update(status=RoundStatus.SUCCEEDED,
                                               step_state=StepState.DONE, progress=100.0,
                                               finished_at=timezone.now())
        append_log(row.pk, "not promoted (by "
                           f"{getattr(user, 'username', None) or 'the platform'}); "
                           f"{row.parent.name} stays")
    row.refresh_from_db()
    return row


def rounds_due() -> list[Round]:
    """Start the scheduled rounds whose campaign has gathered enough new trusted judgments
    since the last round that read it (Celery beat)."""
    started = []
    for sched in RoundSchedule.objects.filter(enabled=True).select_related("campaign"):
        campaign = sched.campaign
        last = (Round.objects.filter(campaigns=campaign).exclude(status=RoundStatus.CANCELLED)
                .order_by("-created_at").first())
        seen = last.judgments_at_start if last is not None else 0
        now = trusted_judgments([campaign])
        if now - seen < sched.every_judgments:
            continue
        try:
            started.append(round_start(campaigns=[campaign], config=sched.config,
                                       trigger="schedule"))
        except RoundError as exc:
            logger.info("scheduled round of %s not started: %s", campaign.slug, exc)
    return started


# What an admin may do to a round, by the name the page and the API use.
ROUND_ACTIONS = {"cancel": round_cancel, "resume": round_resume, "promote": round_promote,
                 "keep_parent": round_decline}
