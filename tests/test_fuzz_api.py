"""Fuzzing the API from its own OpenAPI schema: no 5xx, every refusal with a reason, and a
refused request stores nothing.

Every operation of the schema is called with bodies drawn from its request schema (valid-looking
values and their edges), with arbitrary JSON (deep, huge numbers, wrong types) and with raw
bytes, and with path parameters that exist or do not. Researcher operations go through a
signed-in owner's session (an admin's for retraining); the rater calls go through both doors
(the REST views and the fast path in front of Django) with the rate page's token. Bounded for
CI: a few dozen draws per operation.
"""

from __future__ import annotations

import json

import pytest
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from annotation.models import Assignment, Campaign, Enrollment, Invite, Judgment
from feedback.models import Round
from tests.annotation.conftest import enrol, make_campaign, token_client

pytestmark = pytest.mark.django_db
DRAWS = 30  # per operation and door
RATER_PATHS = ("/api/assignments/", "/api/rate/")
ADMIN_PATHS = ("/api/rounds/", "/api/lineages/")  # retraining is for admins
WATCHED = (Campaign, Invite, Judgment, Enrollment, Assignment, Round)


def _schema() -> dict:
    from drf_spectacular.generators import SchemaGenerator

    return json.loads(json.dumps(SchemaGenerator().get_schema(request=None, public=True)))


SCHEMA = None


def operations() -> list[tuple[str, str, dict]]:
    global SCHEMA
    if SCHEMA is None:
        import django

        django.setup()
        SCHEMA = _schema()
    return [(path, method, op) for path, ops in sorted(SCHEMA["paths"].items())
            for method, op in sorted(ops.items()) if method in ("get", "post", "patch", "delete")]


def from_schema(schema: dict, depth: int = 0):
    """Values for an OpenAPI schema: what it allows, its edges, and now and then a wrong type."""
    if "$ref" in schema:
        schema = SCHEMA["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    for key in ("allOf", "oneOf", "anyOf"):
        if key in schema:
            return st.one_of(*(from_schema(s, depth) for s in schema[key]))
    kind = schema.get("type", "object")
    if "enum" in schema:
        base = st.sampled_from([v for v in schema["enum"] if v is not None] or [""])
    elif kind == "string":
        base = (st.uuids().map(str) if schema.get("format") == "uuid" else
                st.text(max_size=schema.get("maxLength", 60) + 2))
    elif kind == "integer":
        base = st.integers(min_value=-2 ** 64, max_value=2 ** 64) | st.sampled_from(
            [0, -1, 1, 2 ** 31 - 1, 2 ** 31, schema.get("minimum", 0),
             schema.get("maximum", 0)])
    elif kind == "number":
        base = st.floats(allow_nan=False, allow_infinity=False, width=32)
    elif kind == "boolean":
        base = st.booleans()
    elif kind == "array":
        base = st.lists(from_schema(schema.get("items", {}), depth + 1) if depth < 3
                        else st.none(), max_size=4)
    else:
        props = schema.get("properties", {}) if depth < 3 else {}
        need = set(schema.get("required", []))
        base = st.fixed_dictionaries(
            {k: from_schema(v, depth + 1) for k, v in props.items() if k in need},
            optional={k: from_schema(v, depth + 1) for k, v in props.items() if k not in need})
    return base | st.none() if schema.get("nullable") else base


def _json_body(op: dict):
    body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
    return from_schema(body) if body else None


ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2 ** 70, max_value=2 ** 70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=4),
    max_leaves=20)
NASTY_TEXT = st.sampled_from([
    "", "{", "[" * 5000 + "]" * 5000, '{"a":' * 3000 + "1" + "}" * 3000, "NaN",
    '{"decision_ms": NaN}', "\x00\xff", "null", "[]", '"x"', "1e999"])
PARAM = st.text(alphabet=st.characters(codec="ascii", categories=["L", "N"],
                                       include_characters="-_.~"), min_size=1, max_size=40)


def _counts() -> dict[str, int]:
    return {m.__name__: m.objects.count() for m in WATCHED}


@pytest.fixture
def world():
    from django.contrib.auth import get_user_model

    from annotation.roles import RESEARCHER, role_add

    researcher = get_user_model().objects.create_user("owner", password="pw-owner-1234")
    role_add(researcher, RESEARCHER)
    campaign = make_campaign(slug="fuzzed")
    Campaign.objects.filter(pk=campaign.pk).update(created_by=researcher)
    (rater,) = enrol(campaign)
    owner, admin = Client(), Client()
    owner.force_login(researcher)
    admin.force_login(get_user_model().objects.create_superuser("root", password="pw-root-1234"))
    return {"campaign": campaign, "rater": rater, "owner": owner, "admin": admin}


def _valid_params(path: str, world: dict, rater_client) -> dict[str, str]:
    params = {"slug": world["campaign"].slug, "pseudonym": "nobody", "lineage": "main",
              "round_id": "1", "snapshot_id": "1"}
    if "{token}" in path:
        body = rater_client.post(f"/api/rate/{world['campaign'].slug}/next/").json()
        leases = body.get("assignments") or []
        params["token"] = leases[0]["id"] if leases else "00000000-0000-0000-0000-000000000000"
    return params


def _runner(path: str, method: str, op: dict, client, world: dict, seen: dict):
    """One operation's draws: a Hypothesis test over bodies and path parameters."""
    body_strategy = st.one_of(*(s for s in (_json_body(op),) if s is not None),
                              ANY_JSON.map(json.dumps), NASTY_TEXT)

    @settings(max_examples=DRAWS, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(body=body_strategy, real=st.booleans(), fuzzed=st.dictionaries(
        st.sampled_from(["slug", "token", "pseudonym", "lineage", "round_id",
                         "snapshot_id"]), PARAM))
    def call(body, real, fuzzed):
        params = _valid_params(path, world, client)
        if not real:
            params.update(fuzzed)
        url = path.format(**params)
        if method == "delete" and real:
            return  # deleting the one campaign would leave nothing to fuzz
        raw = body if isinstance(body, str) else json.dumps(body)
        before = _counts()
        if method == "get":
            res = client.get(url)
        elif isinstance(client, Client):
            res = getattr(client, method)(url, raw, content_type="application/json")
        else:  # a rater call: the door checks who answered only for valid routes
            res = client.client.post(url, raw, content_type="application/json")
        status = res.status_code
        seen.setdefault(f"{method} {path}", set()).add(status)
        assert status < 500, (method, url, raw[:300], status)
        if status >= 400:
            assert res.content.strip(), (method, url, status)  # a reason, never empty
            assert _counts() == before, (method, url, raw[:300], status)

    return call


@pytest.mark.parametrize("door", ["api", "fast-path"])
def test_no_draw_gets_a_5xx_and_a_refusal_stores_nothing(world, door):
    ops = operations()
    checked = 0
    seen: dict[str, set[int]] = {}
    for path, method, op in ops:
        rater_call = path.startswith(RATER_PATHS)
        if door == "fast-path" and not rater_call:
            continue  # the fast path answers only the rater calls
        client = (token_client(world["campaign"], world["rater"], door) if rater_call
                  else world["admin"] if path.startswith(ADMIN_PATHS) else world["owner"])
        _runner(path, method, op, client, world, seen)()
        checked += 1
    assert checked >= (4 if door == "fast-path" else 20)
    # the draws reached the operations' logic, not only their refusals
    statuses = set().union(*seen.values())
    assert any(s < 300 for s in statuses) and any(400 <= s < 500 for s in statuses)
