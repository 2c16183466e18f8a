"""What the annotation app does when an app below it, or Django's auth, says something happened
(connected in ``AnnotationConfig.ready``)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.http import HttpRequest

from annotation.services.campaign_items import campaign_sampling_advance
from annotation.services.scheduling import rater_leases_end
from annotation.services.sign_in import client_address, sign_in_failed, sign_in_succeeded


def on_candidate_job_finished(sender: type, *, job_id: int, **kwargs: Any) -> None:
    """A campaign waiting for this job's candidates may now be built (or has failed)."""
    campaign_sampling_advance(job_id=job_id)


def on_sign_in_failed(sender: str, *, credentials: dict, request: HttpRequest | None = None,
                      **kwargs: Any) -> None:
    """A password check failed (the site's sign-in form, the admin's, any ``authenticate``
    call with a request): count it for the throttle."""
    if request is None:  # not a person at a form (a management command, say)
        return
    username = str(credentials.get(get_user_model().USERNAME_FIELD) or "")
    sign_in_failed(username=username, address=client_address(request))


def on_signed_in(sender: type, *, user, **kwargs: Any) -> None:
    """A right password (or an invite) signed someone in: their name's failures are forgotten."""
    sign_in_succeeded(username=user.get_username())


def on_user_saved(sender: type, *, instance, update_fields=None, **kwargs: Any) -> None:
    """An account switched off (``is_active`` false, in the admin or anywhere else) lets go of
    the items it holds now: its rating calls are refused from then on (``rules``), so its
    leases would otherwise hold the items until they ran out. A bulk ``update()`` sends no
    signal; those leases run out within their campaign's ``lease_seconds``."""
    if instance.is_active or (update_fields is not None and "is_active" not in update_fields):
        return
    rater_leases_end(rater_id=instance.pk)
