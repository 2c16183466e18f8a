"""Raters joining a campaign: invite links and crowd-platform entry."""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from functools import lru_cache

from django.contrib.auth import get_user_model
from django.core import signing
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from annotation.models import Campaign, CampaignStatus, Enrollment, Invite
from annotation.opaque import open_ids, seal_ids
from annotation.roles import RATER, role_add
from annotation.services.scheduling import leases_end

logger = logging.getLogger(__name__)

MAX_EXTERNAL_ID = 200
RATER_TOKEN_SALT = "annotation.rater-api"  # noqa: S105 - a signing namespace, not a secret
RATER_TOKEN_MAX_AGE_S = 12 * 3600  # a page open longer reloads itself for a fresh one


class InviteError(Exception):
    """The invite cannot be used; the message says why, for the person holding the link."""


def _crowd_username(campaign: Campaign, participant: str) -> str:
    digest = hashlib.sha256(f"{campaign.pk}:{participant}".encode()).hexdigest()[:24]
    return f"p-{digest}"


@transaction.atomic
def invite_accept(*, token: str, user=None, participant: str = "", study: str = "",
                  session: str = "") -> Enrollment:
    """Enrol the holder of an invite link.

    A signed-in user is enrolled as themselves. Otherwise a rater account is made: for a crowd
    participant (``participant`` from the campaign's URL parameter) the same participant id
    always finds the same account, so reopening the link resumes; a plain invite makes a fresh
    pseudonymous account. Opening the same link twice uses the invite once.
    """
    invite = (Invite.objects.select_for_update(of=("self",), no_key=True)
              .select_related("campaign")
              .filter(token=token).first())
    if invite is None or not invite.active:
        raise InviteError("This invite link is not valid.")
    campaign = invite.campaign
    if invite.expires_at is not None and invite.expires_at <= timezone.now():
        raise InviteError("This invite link has expired.")
    if campaign.status == CampaignStatus.CLOSED:
        raise InviteError("This study has finished. Thank you for your interest.")
    participant = participant.strip()
    if len(participant) > MAX_EXTERNAL_ID or len(study) > MAX_EXTERNAL_ID or len(
            session) > MAX_EXTERNAL_ID:
        raise InviteError("The participant id in this link is too long.")
    if campaign.crowd_param and not participant and (user is None or not user.is_authenticated):
        raise InviteError(f"This link must be opened from the study platform (it needs the "
                          f"{campaign.crowd_param} parameter).")

    User = get_user_model()
    if user is not None and user.is_authenticated:
        rater = user
    elif participant:
        rater, made = User.objects.get_or_create(username=_crowd_username(campaign, participant))
        if made:
            rater.set_unusable_password()
            rater.save(update_fields=["password"])
    else:
        rater = User(username=f"r-{secrets.token_hex(10)}")
        rater.set_unusable_password()
        rater.save()

    enrollment = Enrollment.objects.filter(campaign=campaign, rater=rater).first()
    if enrollment is not None:
        return enrollment
    if invite.max_uses is not None and invite.uses >= invite.max_uses:
        raise InviteError("This invite link has been used up.")
    try:
        with transaction.atomic():
            enrollment = Enrollment.objects.create(
                campaign=campaign, rater=rater, invite=invite, external_id=participant,
                external_study=study, external_session=session,
            )
    except IntegrityError:  # the same person's second tab, a moment earlier
        return Enrollment.objects.get(campaign=campaign, rater=rater)
    Invite.objects.filter(pk=invite.pk).update(uses=F("uses") + 1)
    role_add(rater, RATER)
    logger.info("rater %s enrolled in %s through invite %s", rater.pk, campaign.slug, invite.pk)
    return enrollment


def consent_give(*, enrollment: Enrollment) -> None:
    """Record the rater's consent to the campaign's terms (the first time only)."""
    Enrollment.objects.filter(pk=enrollment.pk, consented_at=None).update(
        consented_at=timezone.now())


def rater_token_make(*, enrollment: Enrollment) -> str:
    """The credential the rater page sends with its rating calls: the rater and the campaign,
    signed and dated. It is checked without a database read (the session and its user cost
    two per request), sent in a header rather than a cookie (so another site cannot make the
    browser send it: no CSRF token needed) and good for this campaign's rating calls only."""
    signer = signing.TimestampSigner(salt=RATER_TOKEN_SALT)
    return signer.sign(seal_ids(enrollment.rater_id, enrollment.campaign_id))


def rater_token_read(token: str) -> tuple[int, int]:
    """(rater id, campaign id); raises ``signing.SignatureExpired`` or ``signing.BadSignature``."""
    rater, campaign, signed_at = _rater_token_verified(token)
    if time.time() - signed_at > RATER_TOKEN_MAX_AGE_S:
        raise signing.SignatureExpired("rater token expired")
    return rater, campaign


@lru_cache(maxsize=8192)
def _rater_token_verified(token: str) -> tuple[int, int, int]:
    """The token's signature checked once per process (a page sends the same token with every
    call): (rater id, campaign id, signed at). A bad token raises and is not remembered."""
    signer = signing.TimestampSigner(salt=RATER_TOKEN_SALT)
    value = signer.unsign(token)
    try:
        rater, campaign = open_ids(value, 2)  # sealed: the numbers are not readable
    except ValueError:
        raise signing.BadSignature("malformed rater token") from None
    return rater, campaign, signing.b62_decode(token.rsplit(":", 2)[-2])


@transaction.atomic
def enrollment_set_excluded(*, enrollment: Enrollment, excluded: bool) -> Enrollment:
    """Exclude a rater from a campaign, or take them back: the switch quality control turns.

    An excluded rater is served nothing more (``annotation.rules.serving_state``) and their
    live leases end now, so that their items go to other raters at once. Nothing they answered
    is touched: which judgments count is the reader's decision, from its own records.
    """
    Enrollment.objects.filter(pk=enrollment.pk).update(excluded=excluded)
    if excluded:
        leases_end(rater_id=enrollment.rater_id, campaign_id=enrollment.campaign_id)
        logger.info("rater %s excluded from campaign %s", enrollment.rater_id,
                    enrollment.campaign_id)
    enrollment.excluded = excluded
    return enrollment
