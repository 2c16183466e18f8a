"""Raters joining a campaign: invite links and crowd-platform entry.

Opening a link while signed out makes an account, so the accounts a link makes are throttled:
counted in Django's cache (``CACHES``, as the sign-in throttle's counts) per client address and
per link, in fixed windows of ``INVITE_WINDOW_S`` seconds. Past ``INVITE_MAX_ACCOUNTS_PER_ADDRESS``
or ``INVITE_MAX_ACCOUNTS_PER_LINK_PER_WINDOW`` the link makes nothing more until the window ends
(``InviteThrottled``). Only a new account is counted: a crowd participant whose id already has
one, or a signed-in user, reopens the link freely.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
import time
from functools import lru_cache

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import signing
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from annotation.models import Campaign, CampaignStatus, Enrollment, Invite
from annotation.opaque import open_ids, seal_ids
from annotation.roles import RATER, role_add
from annotation.services import throttle
from annotation.services.scheduling import leases_end

logger = logging.getLogger(__name__)

MAX_EXTERNAL_ID = 200
RATER_TOKEN_SALT = "annotation.rater-api"  # noqa: S105 - a signing namespace, not a secret
RATER_TOKEN_MAX_AGE_S = 12 * 3600  # a page open longer reloads itself for a fresh one


class InviteError(Exception):
    """The invite cannot be used; the message says why, for the person holding the link."""


class InviteThrottled(InviteError):
    """The link, or the client's address, made as many accounts as it may in this window;
    nothing was made. ``wait``: seconds until the window ends."""

    def __init__(self, message: str, *, wait: int) -> None:
        super().__init__(message)
        self.wait = wait


_THROTTLED = {
    "address": "Too many new accounts have been made from your network address. Please try "
               "again in {}.",
    "link": "This invite link has taken as many new raters as it can for now. Please try "
            "again in {}.",
}


def _account_counters(*, invite_id: int, address: str) -> tuple[list[tuple[str, int, str]],
                                                                   float]:
    """(key, limit, what) of each count a new account is held to in the current window (a limit
    of 0 holds none), and the seconds left in the window."""
    number, left = throttle.window(settings.INVITE_WINDOW_S)
    out = []
    if address and settings.INVITE_MAX_ACCOUNTS_PER_ADDRESS > 0:
        out.append((throttle.counter_key("invite-accounts:address", address, number),
                    settings.INVITE_MAX_ACCOUNTS_PER_ADDRESS, "address"))
    if settings.INVITE_MAX_ACCOUNTS_PER_LINK_PER_WINDOW > 0:
        out.append((throttle.counter_key("invite-accounts:link", str(invite_id), number),
                    settings.INVITE_MAX_ACCOUNTS_PER_LINK_PER_WINDOW, "link"))
    return out, left


def _account_counted(*, invite_id: int, address: str) -> None:
    """Count one new account against the link's and the address's limits; past either, count
    nothing and raise ``InviteThrottled``. Each count is taken before it is compared, so
    requests at the same moment cannot all pass under the limit."""
    counters, left = _account_counters(invite_id=invite_id, address=address)
    taken: list[str] = []
    for key, limit, what in counters:
        taken.append(key)
        if throttle.count(key, settings.INVITE_WINDOW_S) > limit:
            for done in taken:  # a refused request leaves the counts as they were
                throttle.uncount(done)
            wait = max(1, math.ceil(left))
            logger.warning("invite %s refused a new account from %s: %s limit reached",
                           invite_id, address or "an unknown address", what)
            raise InviteThrottled(_THROTTLED[what].format(throttle.wait_words(wait)),
                                  wait=wait)


def _crowd_username(campaign: Campaign, participant: str) -> str:
    digest = hashlib.sha256(f"{campaign.pk}:{participant}".encode()).hexdigest()[:24]
    return f"p-{digest}"


@transaction.atomic
def invite_accept(*, token: str, user=None, participant: str = "", study: str = "",
                  session: str = "", address: str | None = None) -> Enrollment:
    """Enrol the holder of an invite link.

    A signed-in user is enrolled as themselves. Otherwise a rater account is made: for a crowd
    participant (``participant`` from the campaign's URL parameter) the same participant id
    always finds the same account, so reopening the link resumes; a plain invite makes a fresh
    pseudonymous account. Opening the same link twice uses the invite once.

    ``address``: the client's address when the link was opened on the site, whose new accounts
    are throttled (``InviteThrottled``, nothing made); None for raters made on the server itself
    (commands), which are not.
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
        rater = User.objects.filter(username=_crowd_username(campaign, participant)).first()
    else:
        rater = None  # a fresh account, below

    if rater is not None:
        enrollment = Enrollment.objects.filter(campaign=campaign, rater=rater).first()
        if enrollment is not None:
            return enrollment
    if invite.max_uses is not None and invite.uses >= invite.max_uses:
        raise InviteError("This invite link has been used up.")
    if rater is None:
        # Counted last, once nothing else refuses: only an account that is made counts.
        if address is not None:
            _account_counted(invite_id=invite.pk, address=address)
        if participant:
            # (get_or_create: the same participant's second tab may have made it meanwhile)
            rater, made = User.objects.get_or_create(
                username=_crowd_username(campaign, participant))
            if made:
                rater.set_unusable_password()
                rater.save(update_fields=["password"])
        else:
            rater = User(username=f"r-{secrets.token_hex(10)}")
            rater.set_unusable_password()
            rater.save()
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
