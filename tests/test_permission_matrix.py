"""Who may do what, route by route: every pattern of the URLconf (the admin's, the API's, the
pages) asked by every role, against one table of expected statuses.

The table is the permission model in one place. A route added to the URLconf without a row
fails ``test_the_table_names_every_route``, and so does a method an API view implements (GET,
POST, PATCH, DELETE ...) without one: a new door needs a decision about who may open it. A row
whose route is gone fails too, so the table stays true.

The requests run against a world made once for the module (two campaigns with items, raters,
leases and a judgment; a snapshot; a policy version with a promotion and a round; a row of
every model the admin shows), each in a savepoint that is rolled back, so what one role's POST
changed is gone before the next role asks.
"""

# The table's rows are wider than a line of code.
# ruff: noqa: E501

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from django.apps import apps
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.contenttypes.models import ContentType
from django.db import transaction
from django.test import Client, override_settings
from django.urls import URLPattern, URLResolver, get_resolver, resolve
from rest_framework.views import APIView

from annotation.apis import RaterApi
from annotation.models import Campaign, Enrollment, Invite
from annotation.roles import ADMIN, RESEARCHER, role_add
from annotation.selectors import media_token
from annotation.services.enrollment import rater_token_make
from annotation.services.judgments import judgment_submit
from annotation.services.scheduling import assignments_next
from feedback.models import QcRun, Round, RoundSchedule, Snapshot
from feedback.services.qc import qc_override
from feedback.services.rounds import version_promote
from policy.models import CandidateJob, DatasetImport, PolicyVersion, TrainingRun
from rendering.models import Clip
from rendering.signing import clip_token
from tests.annotation.conftest import WsgiClient, enrol, make_campaign, make_corpus
from tests.conftest import require_real_services

ROLES = ("anon", "rater", "rater_b", "blocked", "inactive", "owner", "other", "admin")

# anon      nobody signed in
# rater     a rater of the campaign the URL names (signed in, and the rate page's rater token)
# rater_b   a rater of another campaign (signed in, and that campaign's rater token)
# blocked   a rater of this campaign blocked for failed probes (Enrollment.blocked)
# inactive  a rater of this campaign whose account was switched off (is_active=False) after
#           signing in: the session no longer counts; the rater token still reaches the rating
#           services, which refuse it
# owner     the researcher who made the campaign
# other     a researcher who made another campaign and nothing of this one
# admin     staff, superuser and in the admin group
#
# A cell is the status the role gets, or ``login``: a redirect to a sign-in page (the site's or
# the admin's). Where the platform hides that something exists it answers 404 rather than 403:
# another researcher's campaign, snapshot or rater; another rater's exposure files.
# Notes on the rows that are not plain:
# - /accounts/logout/ and the admin's logout (staff) sign out and send to the sign-in page;
#   the admin's logout sends anyone else to the admin's index.
# - /rate/invite/ POST: the link is the capability; whoever opens it is enrolled (signed in: as
#   themselves; a switched-off account's session no longer counts, so as a new rater).
# - /clips/<token>/: the signed, short-lived URL is the capability. The site makes these only on
#   staff pages (the admin's clip preview, the version comparison); raters' pages name exposures
#   (/media/...), which only the rater holding the lease can open.
# - the rating calls: 401 without a credential (the token's scheme is offered); 404 for a caller
#   not enrolled in the campaign and for a token of another campaign; 403 for a lease held by
#   someone else and for a switched-off account's token. A blocked rater is answered (200, the
#   state "blocked", no items). Consent is a session call: 403 without a session.
# - the API schema and its documentation pages are public: they describe the code, not data.
TABLE = """
route                                                              method anon  rater rater_b blocked inactive owner other admin
# the site: open to everyone
/healthz                                                           GET    200   200   200     200     200      200   200   200
/                                                                  GET    200   200   200     200     200      200   200   200
/accounts/login/                                                   GET    200   200   200     200     200      200   200   200
/accounts/logout/                                                  POST   login login login   login   login    login login login
/api/schema/                                                       GET    200   200   200     200     200      200   200   200
/api/docs/                                                         GET    200   200   200     200     200      200   200   200
/api/redoc/                                                        GET    200   200   200     200     200      200   200   200
# raters: an invite link, the rate page, an exposure's files and the rating calls
/rate/invite/<str:token>/                                          GET    200   200   200     200     200      200   200   200
/rate/invite/<str:token>/                                          POST   302   302   302     302     302      302   302   302
/rate/<slug:slug>/                                                 GET    login 200   404     200     login    404   404   404
/media/<str:token>/<str:name>/                                     GET    404   200   404     404     404      404   404   404
/clips/<str:token>/                                                GET    200   200   200     200     200      200   200   200
/api/rate/<slug:slug>/next/                                        POST   401   200   404     200     403      404   404   404
/api/rate/<slug:slug>/consent/                                     POST   403   204   404     204     403      404   404   404
/api/assignments/<uuid:token>/heartbeat/                           POST   401   200   404     403     403      403   403   403
/api/assignments/<uuid:token>/judgment/                            POST   401   201   404     403     403      403   403   403
# researchers: campaigns, quality control, ratings and snapshots; another researcher's campaign does not exist
/campaigns/                                                        GET    login 403   403     403     login    200   200   200
/campaigns/new/                                                    GET    login 403   403     403     login    200   200   200
/campaigns/new/                                                    POST   login 403   403     403     login    200   200   200
/campaigns/<slug:slug>/                                            GET    login 403   403     403     login    200   404   200
/campaigns/<slug:slug>/                                            POST   login 403   403     403     login    302   404   302
/campaigns/<slug:slug>/quality/                                    GET    login 403   403     403     login    200   404   200
/campaigns/<slug:slug>/quality/                                    POST   login 403   403     403     login    302   404   302
/campaigns/<slug:slug>/ratings/                                    GET    login 404   404     404     login    200   404   200
/api/campaigns/                                                    GET    403   403   403     403     403      200   200   200
/api/campaigns/                                                    POST   403   403   403     403     403      400   400   400
/api/campaigns/<slug:slug>/                                        DELETE 403   403   403     403     403      409   404   409
/api/campaigns/<slug:slug>/                                        GET    403   403   403     403     403      200   404   200
/api/campaigns/<slug:slug>/                                        PATCH  403   403   403     403     403      200   404   200
/api/campaigns/<slug:slug>/progress/                               GET    403   403   403     403     403      200   404   200
/api/campaigns/<slug:slug>/status/                                 POST   403   403   403     403     403      200   404   200
/api/campaigns/<slug:slug>/invites/                                POST   403   403   403     403     403      201   404   201
/api/campaigns/<slug:slug>/qc/                                     GET    403   403   403     403     403      200   404   200
/api/campaigns/<slug:slug>/qc/                                     POST   403   403   403     403     403      202   404   202
/api/campaigns/<slug:slug>/raters/<uuid:pseudonym>/status/         POST   403   403   403     403     403      201   404   201
/snapshots/                                                        GET    login 403   403     403     login    200   200   200
/snapshots/                                                        POST   login 403   403     403     login    200   200   200
/snapshots/<int:snapshot_id>/                                      GET    login 403   403     403     login    200   404   200
/api/snapshots/                                                    GET    403   403   403     403     403      200   200   200
/api/snapshots/                                                    POST   403   403   403     403     403      400   400   400
/api/snapshots/<int:snapshot_id>/                                  GET    403   403   403     403     403      200   404   200
/api/snapshots/<int:snapshot_id>/archive/                          GET    403   403   403     403     403      409   404   409
# admins: retraining rounds and the lineages' versions
/rounds/                                                           GET    login 403   403     403     login    403   403   200
/rounds/                                                           POST   login 403   403     403     login    403   403   200
/rounds/<int:round_id>/                                            GET    login 403   403     403     login    403   403   200
/rounds/<int:round_id>/action/                                     POST   login 403   403     403     login    403   403   302
/lineages/<slug:lineage>/                                          GET    login 403   403     403     login    403   403   200
/lineages/<slug:lineage>/                                          POST   login 403   403     403     login    403   403   302
/versions/compare/                                                 GET    login 403   403     403     login    403   403   200
/api/rounds/                                                       GET    403   403   403     403     403      403   403   200
/api/rounds/                                                       POST   403   403   403     403     403      403   403   400
/api/rounds/<int:round_id>/                                        GET    403   403   403     403     403      403   403   200
/api/rounds/<int:round_id>/action/                                 POST   403   403   403     403     403      403   403   200
/api/lineages/<slug:lineage>/rollback/                             POST   403   403   403     403     403      403   403   409
# the admin site: staff only; what the models' admins allow (add, change, delete)
/admin/login/                                                      GET    200   200   200     200     200      200   200   302
/admin/                                                            GET    login login login   login   login    login login 200
/admin/logout/                                                     POST   302   302   302     302     302      302   302   login
/admin/password_change/                                            GET    login login login   login   login    login login 200
/admin/password_change/done/                                       GET    login login login   login   login    login login 200
/admin/autocomplete/                                               GET    login login login   login   login    login login 403
/admin/jsi18n/                                                     GET    login login login   login   login    login login 200
/admin/r/<path:content_type_id>/<path:object_id>/                  GET    login login login   login   login    login login 404
/admin/auth/group/                                                 GET    login login login   login   login    login login 200
/admin/auth/group/add/                                             GET    login login login   login   login    login login 200
/admin/auth/group/<path:object_id>/history/                        GET    login login login   login   login    login login 200
/admin/auth/group/<path:object_id>/delete/                         GET    login login login   login   login    login login 200
/admin/auth/group/<path:object_id>/change/                         GET    login login login   login   login    login login 200
/admin/auth/group/<path:object_id>/                                GET    login login login   login   login    login login 302
/admin/auth/user/<id>/password/                                    GET    login login login   login   login    login login 200
/admin/auth/user/                                                  GET    login login login   login   login    login login 200
/admin/auth/user/add/                                              GET    login login login   login   login    login login 200
/admin/auth/user/<path:object_id>/history/                         GET    login login login   login   login    login login 200
/admin/auth/user/<path:object_id>/delete/                          GET    login login login   login   login    login login 200
/admin/auth/user/<path:object_id>/change/                          GET    login login login   login   login    login login 200
/admin/auth/user/<path:object_id>/                                 GET    login login login   login   login    login login 302
/admin/rendering/clip/                                             GET    login login login   login   login    login login 200
/admin/rendering/clip/add/                                         GET    login login login   login   login    login login 403
/admin/rendering/clip/<path:object_id>/history/                    GET    login login login   login   login    login login 200
/admin/rendering/clip/<path:object_id>/delete/                     GET    login login login   login   login    login login 200
/admin/rendering/clip/<path:object_id>/change/                     GET    login login login   login   login    login login 200
/admin/rendering/clip/<path:object_id>/                            GET    login login login   login   login    login login 302
/admin/policy/dataset/                                             GET    login login login   login   login    login login 200
/admin/policy/dataset/add/                                         GET    login login login   login   login    login login 403
/admin/policy/dataset/<path:object_id>/history/                    GET    login login login   login   login    login login 200
/admin/policy/dataset/<path:object_id>/delete/                     GET    login login login   login   login    login login 200
/admin/policy/dataset/<path:object_id>/change/                     GET    login login login   login   login    login login 200
/admin/policy/dataset/<path:object_id>/                            GET    login login login   login   login    login login 302
/admin/policy/episode/                                             GET    login login login   login   login    login login 200
/admin/policy/episode/add/                                         GET    login login login   login   login    login login 403
/admin/policy/episode/<path:object_id>/history/                    GET    login login login   login   login    login login 200
/admin/policy/episode/<path:object_id>/delete/                     GET    login login login   login   login    login login 200
/admin/policy/episode/<path:object_id>/change/                     GET    login login login   login   login    login login 200
/admin/policy/episode/<path:object_id>/                            GET    login login login   login   login    login login 302
/admin/policy/datasetimport/                                       GET    login login login   login   login    login login 200
/admin/policy/datasetimport/add/                                   GET    login login login   login   login    login login 200
/admin/policy/datasetimport/<path:object_id>/history/              GET    login login login   login   login    login login 200
/admin/policy/datasetimport/<path:object_id>/delete/               GET    login login login   login   login    login login 200
/admin/policy/datasetimport/<path:object_id>/change/               GET    login login login   login   login    login login 200
/admin/policy/datasetimport/<path:object_id>/                      GET    login login login   login   login    login login 302
/admin/policy/trainingrun/                                         GET    login login login   login   login    login login 200
/admin/policy/trainingrun/add/                                     GET    login login login   login   login    login login 403
/admin/policy/trainingrun/<path:object_id>/history/                GET    login login login   login   login    login login 200
/admin/policy/trainingrun/<path:object_id>/delete/                 GET    login login login   login   login    login login 200
/admin/policy/trainingrun/<path:object_id>/change/                 GET    login login login   login   login    login login 200
/admin/policy/trainingrun/<path:object_id>/                        GET    login login login   login   login    login login 302
/admin/policy/candidatejob/                                        GET    login login login   login   login    login login 200
/admin/policy/candidatejob/add/                                    GET    login login login   login   login    login login 403
/admin/policy/candidatejob/<path:object_id>/history/               GET    login login login   login   login    login login 200
/admin/policy/candidatejob/<path:object_id>/delete/                GET    login login login   login   login    login login 403
/admin/policy/candidatejob/<path:object_id>/change/                GET    login login login   login   login    login login 200
/admin/policy/candidatejob/<path:object_id>/                       GET    login login login   login   login    login login 302
/admin/policy/candidate/                                           GET    login login login   login   login    login login 200
/admin/policy/candidate/add/                                       GET    login login login   login   login    login login 403
/admin/policy/candidate/<path:object_id>/history/                  GET    login login login   login   login    login login 200
/admin/policy/candidate/<path:object_id>/delete/                   GET    login login login   login   login    login login 200
/admin/policy/candidate/<path:object_id>/change/                   GET    login login login   login   login    login login 200
/admin/policy/candidate/<path:object_id>/                          GET    login login login   login   login    login login 302
/admin/annotation/campaign/                                        GET    login login login   login   login    login login 200
/admin/annotation/campaign/add/                                    GET    login login login   login   login    login login 403
/admin/annotation/campaign/<path:object_id>/history/               GET    login login login   login   login    login login 200
/admin/annotation/campaign/<path:object_id>/delete/                GET    login login login   login   login    login login 302
/admin/annotation/campaign/<path:object_id>/change/                GET    login login login   login   login    login login 200
/admin/annotation/campaign/<path:object_id>/                       GET    login login login   login   login    login login 302
/admin/annotation/item/                                            GET    login login login   login   login    login login 200
/admin/annotation/item/add/                                        GET    login login login   login   login    login login 403
/admin/annotation/item/<path:object_id>/history/                   GET    login login login   login   login    login login 200
/admin/annotation/item/<path:object_id>/delete/                    GET    login login login   login   login    login login 403
/admin/annotation/item/<path:object_id>/change/                    GET    login login login   login   login    login login 200
/admin/annotation/item/<path:object_id>/                           GET    login login login   login   login    login login 302
/admin/annotation/assignment/                                      GET    login login login   login   login    login login 200
/admin/annotation/assignment/add/                                  GET    login login login   login   login    login login 403
/admin/annotation/assignment/<path:object_id>/history/             GET    login login login   login   login    login login 200
/admin/annotation/assignment/<path:object_id>/delete/              GET    login login login   login   login    login login 403
/admin/annotation/assignment/<path:object_id>/change/              GET    login login login   login   login    login login 200
/admin/annotation/assignment/<path:object_id>/                     GET    login login login   login   login    login login 302
/admin/annotation/judgment/                                        GET    login login login   login   login    login login 200
/admin/annotation/judgment/add/                                    GET    login login login   login   login    login login 403
/admin/annotation/judgment/<path:object_id>/history/               GET    login login login   login   login    login login 200
/admin/annotation/judgment/<path:object_id>/delete/                GET    login login login   login   login    login login 403
/admin/annotation/judgment/<path:object_id>/change/                GET    login login login   login   login    login login 200
/admin/annotation/judgment/<path:object_id>/                       GET    login login login   login   login    login login 302
/admin/annotation/enrollment/                                      GET    login login login   login   login    login login 200
/admin/annotation/enrollment/add/                                  GET    login login login   login   login    login login 200
/admin/annotation/enrollment/<path:object_id>/history/             GET    login login login   login   login    login login 200
/admin/annotation/enrollment/<path:object_id>/delete/              GET    login login login   login   login    login login 200
/admin/annotation/enrollment/<path:object_id>/change/              GET    login login login   login   login    login login 200
/admin/annotation/enrollment/<path:object_id>/                     GET    login login login   login   login    login login 302
/admin/feedback/qcdecision/                                        GET    login login login   login   login    login login 200
/admin/feedback/qcdecision/add/                                    GET    login login login   login   login    login login 403
/admin/feedback/qcdecision/<path:object_id>/history/               GET    login login login   login   login    login login 200
/admin/feedback/qcdecision/<path:object_id>/delete/                GET    login login login   login   login    login login 403
/admin/feedback/qcdecision/<path:object_id>/change/                GET    login login login   login   login    login login 200
/admin/feedback/qcdecision/<path:object_id>/                       GET    login login login   login   login    login login 302
/admin/feedback/qcrun/                                             GET    login login login   login   login    login login 200
/admin/feedback/qcrun/add/                                         GET    login login login   login   login    login login 403
/admin/feedback/qcrun/<path:object_id>/history/                    GET    login login login   login   login    login login 200
/admin/feedback/qcrun/<path:object_id>/delete/                     GET    login login login   login   login    login login 403
/admin/feedback/qcrun/<path:object_id>/change/                     GET    login login login   login   login    login login 200
/admin/feedback/qcrun/<path:object_id>/                            GET    login login login   login   login    login login 302
/admin/feedback/snapshot/                                          GET    login login login   login   login    login login 200
/admin/feedback/snapshot/add/                                      GET    login login login   login   login    login login 403
/admin/feedback/snapshot/<path:object_id>/history/                 GET    login login login   login   login    login login 200
/admin/feedback/snapshot/<path:object_id>/delete/                  GET    login login login   login   login    login login 403
/admin/feedback/snapshot/<path:object_id>/change/                  GET    login login login   login   login    login login 200
/admin/feedback/snapshot/<path:object_id>/                         GET    login login login   login   login    login login 302
/admin/feedback/round/                                             GET    login login login   login   login    login login 200
/admin/feedback/round/add/                                         GET    login login login   login   login    login login 403
/admin/feedback/round/<path:object_id>/history/                    GET    login login login   login   login    login login 200
/admin/feedback/round/<path:object_id>/delete/                     GET    login login login   login   login    login login 403
/admin/feedback/round/<path:object_id>/change/                     GET    login login login   login   login    login login 200
/admin/feedback/round/<path:object_id>/                            GET    login login login   login   login    login login 302
/admin/feedback/promotion/                                         GET    login login login   login   login    login login 200
/admin/feedback/promotion/add/                                     GET    login login login   login   login    login login 403
/admin/feedback/promotion/<path:object_id>/history/                GET    login login login   login   login    login login 200
/admin/feedback/promotion/<path:object_id>/delete/                 GET    login login login   login   login    login login 403
/admin/feedback/promotion/<path:object_id>/change/                 GET    login login login   login   login    login login 200
/admin/feedback/promotion/<path:object_id>/                        GET    login login login   login   login    login login 302
/admin/feedback/roundschedule/                                     GET    login login login   login   login    login login 200
/admin/feedback/roundschedule/add/                                 GET    login login login   login   login    login login 200
/admin/feedback/roundschedule/<path:object_id>/history/            GET    login login login   login   login    login login 200
/admin/feedback/roundschedule/<path:object_id>/delete/             GET    login login login   login   login    login login 200
/admin/feedback/roundschedule/<path:object_id>/change/             GET    login login login   login   login    login login 200
/admin/feedback/roundschedule/<path:object_id>/                    GET    login login login   login   login    login login 302
/admin/policy/policyversion/                                       GET    login login login   login   login    login login 200
/admin/policy/policyversion/add/                                   GET    login login login   login   login    login login 403
/admin/policy/policyversion/<path:object_id>/history/              GET    login login login   login   login    login login 200
/admin/policy/policyversion/<path:object_id>/delete/               GET    login login login   login   login    login login 200
/admin/policy/policyversion/<path:object_id>/change/               GET    login login login   login   login    login login 200
/admin/policy/policyversion/<path:object_id>/                      GET    login login login   login   login    login login 302
/admin/^(?P<app_label>auth|rendering|policy|annotation|feedback)/$ GET    login login login   login   login    login login 200
/admin/(?P<url>.*)$                                                GET    login login login   login   login    login login 404
"""

LOGIN_PATHS = ("/accounts/login/", "/admin/login/")

# Bodies of the requests that are not GETs (form fields for pages, JSON for the API): enough for
# an allowed role to get past validation where that is cheap, so the table shows the action
# allowed, not only a form refused.
BODIES: dict[tuple[str, str], dict] = {
    ("POST", "campaigns/<slug:slug>/"): {"action": "status", "status": "paused"},
    ("POST", "campaigns/<slug:slug>/quality/"): {"action": "run"},
    ("POST", "rounds/<int:round_id>/action/"): {"action": "cancel"},
    ("POST", "lineages/<slug:lineage>/"): {"action": "rollback"},
    ("POST", "api/assignments/<uuid:token>/judgment/"): {"choice": "left", "decision_ms": 1200},
    ("PATCH", "api/campaigns/<slug:slug>/"): {"name": "Renamed"},
    ("POST", "api/campaigns/<slug:slug>/status/"): {"status": "paused"},
    ("POST", "api/campaigns/<slug:slug>/raters/<uuid:pseudonym>/status/"): {
        "status": "flagged", "reason": "checked by hand"},
    ("POST", "api/rounds/<int:round_id>/action/"): {"action": "cancel"},
}


@dataclass(frozen=True)
class Row:
    route: str  # as the URLconf spells it (the table writes it with a leading "/")
    method: str
    expected: dict[str, str]

    @property
    def id(self) -> str:
        return f"{self.method} /{self.route}"


def table_rows(text: str = TABLE) -> list[Row]:
    lines = [line.split() for line in text.strip().splitlines()
             if line.strip() and not line.startswith("#")]
    head, body = lines[0], lines[1:]
    assert tuple(head[2:]) == ROLES, head
    rows = []
    for cells in body:
        assert len(cells) == len(head) and cells[0].startswith("/"), cells
        rows.append(Row(cells[0][1:], cells[1], dict(zip(ROLES, cells[2:], strict=True))))
    return rows


# --- the URLconf ---------------------------------------------------------------------------------


def url_routes(resolver: URLResolver | None = None, prefix: str = "") -> dict[str, URLPattern]:
    """Every pattern, by its full route (the first where two share a route: Django never reaches
    the second, as with the admin's own login behind the throttled one)."""
    resolver = resolver or get_resolver()
    out: dict[str, URLPattern] = {}
    for p in resolver.url_patterns:
        route = prefix + str(p.pattern)
        found = url_routes(p, route) if isinstance(p, URLResolver) else {route: p}
        for key, value in found.items():
            out.setdefault(key, value)
    return out


def api_methods(pattern: URLPattern) -> set[str]:
    """The methods a DRF view implements (none for other views)."""
    view = getattr(pattern.callback, "view_class", None)
    if view is None or not issubclass(view, APIView):
        return set()
    return {m.upper() for m in view.http_method_names
            if m not in ("options", "head") and hasattr(view, m)}


def test_the_table_names_every_route():
    # given: the routes of the URLconf and the rows of the table
    routes = url_routes()
    rows = table_rows()
    named = {(r.route, r.method) for r in rows}
    # when
    missing = [f"/{r}" for r in routes if not any(route == r for route, _ in named)]
    missing += [f"{m} /{r}" for r, p in routes.items() for m in sorted(api_methods(p))
                if (r, m) not in named]
    stale = sorted(f"{m} /{r}" for r, m in named if r not in routes)
    twice = sorted({r.id for r in rows if sum(x.id == r.id for x in rows) > 1})
    # then
    assert not missing, f"routes or API methods without a row in TABLE: {missing}"
    assert not stale, f"rows in TABLE for routes that no longer exist: {stale}"
    assert not twice, f"rows in TABLE twice: {twice}"


# --- the world -----------------------------------------------------------------------------------


@dataclass
class World:
    media: Path
    sessions: dict[str, str] = field(default_factory=dict)  # role -> session key
    tokens: dict[str, str] = field(default_factory=dict)  # role -> rater token
    params: dict[str, str] = field(default_factory=dict)  # URL parameter -> value


@pytest.fixture(scope="module")
def world(django_db_setup, django_db_blocker, tmp_path_factory):
    """Made once, in a transaction rolled back when the module is done (each test's own
    transaction nests in it as a savepoint)."""
    require_real_services()
    media = tmp_path_factory.mktemp("matrix-media")
    with django_db_blocker.unblock(), override_settings(MEDIA_ROOT=str(media)), \
            transaction.atomic():
        yield _world(media)
        transaction.set_rollback(True)


@pytest.fixture(autouse=True)
def _media_root(request) -> Path | None:
    """The world's files for every test of the module that uses it (the suite's own fixture of
    this name gives each test an empty folder)."""
    if "world" not in request.fixturenames:
        return None
    return request.getfixturevalue("world").media


def _user(username: str, *roles: str, **flags):
    user = get_user_model().objects.create_user(username, password=f"pw-{username}-1234",
                                                **flags)
    for role in roles:
        role_add(user, role)
    return user


def _world(media: Path) -> World:
    owner, other = _user("owner", RESEARCHER), _user("other", RESEARCHER)
    admin = _user("boss", ADMIN, is_staff=True, is_superuser=True)
    dataset = make_corpus()
    # leases of an hour: every request of the module finds the ones made here alive
    campaign = make_campaign(dataset, slug="matrix-study", created_by=owner, lease_seconds=3600)
    elsewhere = make_campaign(dataset, slug="elsewhere", created_by=other, lease_seconds=3600)
    rater, blocked, inactive = enrol(campaign, 3)
    (rater_b,) = enrol(elsewhere)

    # one answer (a judgment for the admin to show), then the lease the URLs name
    first = assignments_next(rater=rater, campaign_slug=campaign.slug).assignments[0]
    judgment_submit(rater=rater, token=str(first.token), idempotency_key=uuid.uuid4(),
                    choice="left", decision_ms=1500)
    lease = assignments_next(rater=rater, campaign_slug=campaign.slug).assignments[0]
    Enrollment.objects.filter(campaign=campaign, rater=blocked).update(blocked=True)

    version = PolicyVersion.objects.create(name="v1", checkpoint_sha="c" * 64, config={},
                                           tokenizer={}, dataset=dataset)
    version_promote(version=version, user=admin)
    rnd = Round.objects.create(parent=version, lineage=version.lineage, created_by=admin)
    rnd.campaigns.add(campaign)
    RoundSchedule.objects.create(campaign=campaign)
    snapshot = Snapshot.objects.create(filters={"campaigns": [campaign.slug]},
                                       filter_key="f" * 64, created_by=owner)
    QcRun.objects.create(campaign=campaign)
    qc_override(enrollment=Enrollment.objects.get(campaign=campaign, rater=blocked),
                status="flagged", reason="failed probes", user=owner)
    TrainingRun.objects.create(dataset=dataset)
    CandidateJob.objects.create(version=version, split="test")
    DatasetImport.objects.create(upload="imports/corpus.zip", format="backchannel")

    world = World(media=media)
    users = {"rater": rater, "rater_b": rater_b, "blocked": blocked, "inactive": inactive,
             "owner": owner, "other": other, "admin": admin}
    for role, user in users.items():
        client = Client()
        client.force_login(user)
        world.sessions[role] = client.cookies[settings.SESSION_COOKIE_NAME].value
    for role, where in (("rater", campaign), ("rater_b", elsewhere), ("blocked", campaign),
                        ("inactive", campaign)):
        world.tokens[role] = rater_token_make(
            enrollment=Enrollment.objects.get(campaign=where, rater=users[role]))
    get_user_model().objects.filter(pk=inactive.pk).update(is_active=False)

    world.params = {
        "slug": campaign.slug,
        "invite": Invite.objects.filter(campaign=campaign).first().token,
        "media": media_token(lease),
        "clip": clip_token(Clip.objects.get(pk=lease.item.members.first().clip_id)),
        "lease": str(lease.token),
        "name": "0-video",
        "pseudonym": str(Enrollment.objects.get(campaign=campaign, rater=rater).pseudonym),
        "snapshot_id": str(snapshot.pk),
        "round_id": str(rnd.pk),
        "lineage": version.lineage,
        "content_type_id": str(ContentType.objects.get_for_model(Campaign).pk),
        "campaign_pk": str(campaign.pk),
        "id": str(rater.pk),
        "app_label": "annotation",
        "url": "no-such-page/",
    }
    return world


# --- requests ------------------------------------------------------------------------------------

_PARAM = re.compile(r"<(?:\w+:)?(\w+)>|\(\?P<(\w+)>[^)]*\)")
_TOKENS = {"rate/invite/": "invite", "media/": "media", "clips/": "clip",
           "api/assignments/": "lease"}


def url_for(route: str, w: World) -> str:
    """The route with its parameters filled from the world."""

    def value(match: re.Match) -> str:
        name = match[1] or match[2]
        if name == "token":
            return w.params[next(v for k, v in _TOKENS.items() if route.startswith(k))]
        if name == "object_id" and route.startswith("admin/r/"):
            return w.params["campaign_pk"]
        if name == "object_id":  # admin/<app>/<model>/<object_id>/...: a row of that model
            app_label, model_name = route.split("/")[1:3]
            obj = apps.get_model(app_label, model_name).objects.order_by("pk").first()
            assert obj is not None, f"the world has no {app_label}.{model_name} for /{route}"
            return str(obj.pk)
        return w.params[name]

    path = "/" + _PARAM.sub(value, route).replace("^", "").replace("$", "")
    # the URL reaches the route it was made for (Django leaves a regex's "^" out of the route)
    assert resolve(path).route == route.replace("^", ""), (route, path, resolve(path).route)
    return path


def send(row: Row, role: str, w: World, *, door: str = "django"):
    """The reply to the row's request made as ``role``: through Django's test client, or through
    the WSGI application, where the rating fast path takes the requests with a rater token
    (``door="fast-path"``, raters only)."""
    path = url_for(row.route, w)
    extra = {"HTTP_AUTHORIZATION": f"Rater {w.tokens[role]}"} if role in w.tokens else {}
    body = dict(BODIES.get((row.method, row.route), {}))
    if row.route == "api/assignments/<uuid:token>/judgment/":
        body["idempotency_key"] = str(uuid.uuid4())
    with transaction.atomic():
        if door == "fast-path":
            reply = WsgiClient(**extra).post(path, body)
            assert reply.door == "fast-path", (row.id, role)
        else:
            client = Client(raise_request_exception=False, **extra)
            if role in w.sessions:
                client.cookies[settings.SESSION_COOKIE_NAME] = w.sessions[role]
            if row.method == "GET":
                reply = client.get(path)
            elif path.startswith("/api/"):
                reply = client.generic(row.method, path, json.dumps(body),
                                       content_type="application/json")
            else:
                reply = client.post(path, body)
            if reply.streaming:
                b"".join(reply.streaming_content)  # read to the end: the file is closed
        transaction.set_rollback(True)
    return reply


def outcome(reply) -> str:
    """The table's word for a reply: its status, or ``login`` for a redirect to sign in."""
    if reply.status_code == 302 and reply["Location"].split("?")[0].endswith(LOGIN_PATHS):
        return "login"
    return str(reply.status_code)


@pytest.mark.parametrize("row", table_rows(), ids=lambda r: r.id)
def test_each_role_gets_what_the_table_says(row, world, db):
    # when: every role makes the row's request
    got = {role: outcome(send(row, role, world)) for role in ROLES}
    # then
    assert got == row.expected
    view = getattr(resolve(url_for(row.route, world)).func, "view_class", None)
    if view is not None and issubclass(view, RaterApi):
        # and the same through the fast path in front of Django, which answers the rate page's
        # calls that carry a rater token (without one, Django answers them as above)
        fast = {role: outcome(send(row, role, world, door="fast-path")) for role in world.tokens}
        assert fast == {role: row.expected[role] for role in world.tokens}


@pytest.mark.parametrize("route", ["campaigns/", "api/campaigns/", "snapshots/",
                                   "api/snapshots/"])
def test_lists_name_a_campaign_only_to_those_who_may_see_it(route, world, db):
    # given: a list every researcher may open (so the status alone says nothing)
    row = Row(route, "GET", {})
    # when
    replies = {role: send(row, role, world) for role in ("owner", "other", "admin")}
    # then: its owner and the admin find the campaign in it; the other researcher does not
    assert all(r.status_code == 200 for r in replies.values())
    assert b"matrix-study" in replies["owner"].content
    assert b"matrix-study" in replies["admin"].content
    assert b"matrix-study" not in replies["other"].content


def test_a_blocked_or_foreign_rater_is_served_no_item(world, db):
    # given: the call that leases items, as the rater page makes it
    row = Row("api/rate/<slug:slug>/next/", "POST", {})
    # when
    blocked = send(row, "blocked", world)
    foreign = send(row, "rater_b", world)
    mine = send(row, "rater", world)
    # then: the blocked rater is told so and gets nothing; a token of another campaign gets
    # nothing of this one; the rater of this campaign gets items
    assert blocked.json()["state"] == "blocked" and blocked.json()["assignments"] == []
    assert "assignments" not in foreign.json()
    assert mine.json()["state"] == "rating" and mine.json()["assignments"]
