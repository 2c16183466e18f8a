"""What a campaign's settings may be, and when each may change.

One set of rules for every write: ``campaign_create`` checks every setting, ``campaign_update``
the ones it changes (and each rule that ties a changed setting to another), so the API, the
researcher pages, the admin and the commands refuse the same values with the same words. Pure
Python: the rules that need the database (sources, items, judgments) are in ``campaigns``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping

from django.core.exceptions import ValidationError
from django.core.validators import URLValidator

from annotation.models import CRITERIA, CampaignStatus, Protocol, criteria_weights_read

MAX_GROUP = 8  # candidates on one screen
MAX_SOURCES = 8
MAX_RATE = 0.5  # one probe kind's share of the items served
MAX_REASONS = 20

# The items are built from these (and a study is sized by them: items x overlap judgments), so
# they are fixed once the campaign has items; a different design is a new campaign.
BUILD_FIELDS = ("sources", "protocol", "group_size", "overlap", "target_items",
                "render_settings")
# What a judgment records and how it is scored, and what raters agreed to: fixed once raters
# have been served, or one campaign's answers would mean two things.
STUDY_FIELDS = ("ask_strength", "reason_tags", "criteria_weights", "consent_text")
# How the campaign is run: may change while it serves raters, until it is closed.
RUNNING_FIELDS = ("instructions", "per_rater_limit", "lease_seconds", "active_order",
                  "gold_rate", "catch_rate", "repeat_rate", "warn_after", "block_after",
                  "crowd_param", "completion_code", "completion_url")
# Labels: may change even once the campaign is closed.
LABEL_FIELDS = ("name", "researchers")
SETTINGS = LABEL_FIELDS + BUILD_FIELDS + STUDY_FIELDS + RUNNING_FIELDS

# Never changed by an edit, with the reason said to whoever tries.
FIXED = {
    "slug": "cannot be changed after the campaign is made (links and exports carry it)",
    "dataset": "cannot be changed after the campaign is made",
    "created_by": "cannot be changed after the campaign is made",
    "created_at": "cannot be changed after the campaign is made",
    "id": "cannot be changed after the campaign is made",
    "status": "changes through the status actions (start, pause, resume, close), not an edit",
    "ratings": "is computed from the judgments, not set",
    "prioritised_upto": "is computed from the judgments, not set",
}

RATES = ("gold_rate", "catch_rate", "repeat_rate")
# The largest value each kind of integer column holds (PostgreSQL's integer and smallint); a
# larger one is refused by its field here, not by the database as a server error.
INT_MAX = 2**31 - 1
SMALL_INT_MAX = 2**15 - 1
_INT_RANGES: dict[str, tuple[int, int]] = {
    "group_size": (2, MAX_GROUP),
    "overlap": (1, 50),
    "target_items": (1, 100_000),
    # No product limit: the column's range, so a huge number is refused here, not by the
    # database.
    "per_rater_limit": (1, INT_MAX),
    # The API and the pages ask for at least 15 s (the rate page renews every lease/4 s, at
    # least every 5 s); shorter leases are for tests of expiry.
    "lease_seconds": (1, 3600),
    "warn_after": (1, SMALL_INT_MAX),
    "block_after": (1, SMALL_INT_MAX),
}
_TEXT_LENGTHS = {"name": 200, "instructions": 20_000, "consent_text": 20_000,
                 "completion_code": 40, "completion_url": 200}
_BOOLEANS = ("ask_strength", "active_order")
_CROWD_PARAM = re.compile(r"[A-Za-z0-9_]{0,40}")
_URL = URLValidator(schemes=["http", "https"])


class CampaignError(ValueError):
    """A campaign cannot be made or changed as asked. ``field`` names the setting ('' where the
    refusal is about the campaign as a whole); the message starts with it and says why."""

    code = "invalid"

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class CampaignInUse(CampaignError):
    """Refused because of what the campaign holds (judgments, live leases) or is doing (serving
    raters), not because a value is wrong."""

    code = "in_use"

    def __init__(self, message: str, *, field: str = "", code: str = "in_use") -> None:
        super().__init__(message, field=field)
        self.code = code


def refuse(field: str, reason: str) -> CampaignError:
    return CampaignError(f"{field}: {reason}", field=field)


def field_fixed_reason(field: str, *, status: str, has_items: bool) -> str:
    """Why ``field`` cannot change now, or '' if it can (the status and whether items exist
    are all it depends on, so forms can show which settings are open)."""
    if field in FIXED:
        return FIXED[field]
    if field not in SETTINGS:
        return "is not a campaign setting"
    if status == CampaignStatus.CLOSED and field not in LABEL_FIELDS:
        return "the campaign is closed; only its name and researchers may change"
    if field in BUILD_FIELDS and has_items:
        return "the campaign's items are built from it, so it is fixed once they exist " \
               "(make a new campaign for another design)"
    if field in STUDY_FIELDS and status != CampaignStatus.DRAFT:
        return f"can change only while the campaign is a draft (it is {status}): answers " \
               "already given were made under the earlier value"
    return ""


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_one(field: str, value: object, protocol: object) -> None:
    if field in _INT_RANGES:
        lo, hi = _INT_RANGES[field]
        if field == "group_size" and protocol != Protocol.GROUP:
            # Not used by a pairwise campaign, but stored: it must fit its column.
            lo, hi = 0, SMALL_INT_MAX
        if not (isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi):
            raise refuse(field, f"must be a whole number {lo}..{hi}, got {value!r}")
    elif field in RATES:
        if not (_is_number(value) and 0 <= value <= MAX_RATE):
            raise refuse(field, f"must be a fraction between 0 and {MAX_RATE}, got {value!r}")
    elif field in _BOOLEANS:
        if not isinstance(value, bool):
            raise refuse(field, f"must be true or false, got {value!r}")
    elif field in _TEXT_LENGTHS:
        limit = _TEXT_LENGTHS[field]
        if not isinstance(value, str) or len(value) > limit:
            raise refuse(field, f"must be text of at most {limit} characters")
        if field == "name" and not value.strip():
            raise refuse(field, "must not be blank")
        if field == "completion_url" and value:
            try:
                _URL(value)
            except ValidationError:
                raise refuse(field, f"must be an http(s) URL, got {value!r}") from None
    elif field == "protocol":
        if value not in Protocol.values:
            raise refuse(field, f"expected one of {', '.join(Protocol.values)}")
    elif field == "sources":
        # Each source's own check (kind, version, samples) needs the database: campaigns.
        if not isinstance(value, list) or not value:
            raise refuse(field, "at least one candidate source is required")
        if len(value) > MAX_SOURCES:
            raise refuse(field, f"at most {MAX_SOURCES} candidate sources")
        _check_no_repeat(value)
    elif field == "criteria_weights":
        if not isinstance(value, dict):
            raise refuse(field, "must be an object {criterion: weight}")
        for k, w in value.items():
            if k not in CRITERIA or not (_is_number(w) and w >= 0):
                raise refuse(field, f"{k!r}={w!r} is not a known criterion with a weight >= 0")
        if not any(criteria_weights_read(value).values()):
            raise refuse(field, "at least one criterion needs a weight above 0")
    elif field == "reason_tags":
        if not isinstance(value, list) or len(value) > MAX_REASONS:
            raise refuse(field, f"must be a list of at most {MAX_REASONS} tags")
        for tag in value:
            if not isinstance(tag, str) or not tag.strip() or len(tag) > 60:
                raise refuse(field, f"each tag must be text of 1..60 characters, got {tag!r}")
        if len(set(value)) < len(value):
            raise refuse(field, "a tag is listed twice")
    elif field == "crowd_param":
        if not isinstance(value, str) or not _CROWD_PARAM.fullmatch(value):
            raise refuse(field, "must be at most 40 letters, digits or _ (e.g. PROLIFIC_PID)")
    elif field == "render_settings" and not isinstance(value, dict):
        raise refuse(field, "must be an object")


def source_identity(source: object) -> tuple[str, str] | None:
    """What decides which candidates a source descriptor takes, as ``campaign_items`` reads it
    (``source_filter``): its kind and the policy version or baseline it names. Nothing else
    counts: a policy source's candidates are the first ``samples`` of that version's, in
    ``source_key`` order, so a seed or temperature written on it picks no other candidates, and
    two entries of one version with different ``samples`` share their first candidates. None
    where the descriptor is malformed (``source_filter`` says why)."""
    if not isinstance(source, dict):
        return None
    kind = source.get("kind")
    if kind == "ground_truth":
        return ("ground_truth", "")
    key = {"policy": "version", "baseline": "name"}.get(kind)  # type: ignore[arg-type]
    if key is None or not isinstance(source.get(key), str):
        return None
    return (str(kind), source[key])


def _check_no_repeat(sources: list) -> None:
    """Two entries that take the same candidates would put a clip against itself."""
    seen: dict[tuple[str, str], int] = {}
    for i, source in enumerate(sources):
        identity = source_identity(source)
        if identity is None:
            continue
        if identity in seen:
            kind, name = identity
            what = kind + (f" {name!r}" if name else "")
            hint = " (ask for more samples of one entry instead)" if kind == "policy" else ""
            raise refuse("sources", f"sources[{i}] ({what}) repeats sources[{seen[identity]}]: "
                                    "both take the same candidates, so items would compare "
                                    f"a clip with itself{hint}")
        seen[identity] = i


def settings_check(values: Mapping[str, object], *, changed: Collection[str]) -> None:
    """Check the settings named in ``changed`` and every rule that ties one of them to another
    setting. ``values`` holds all the campaign's settings as they would be after the change.
    CampaignError names the first one refused."""
    protocol = values.get("protocol")
    for field in changed:
        _check_one(field, values[field], protocol)
    if "protocol" in changed and protocol == Protocol.GROUP and "group_size" not in changed:
        _check_one("group_size", values["group_size"], protocol)
    if set(RATES) & set(changed):
        # Every draw at or above the three rates serves a regular item (probe_kind): at 1 none
        # would be served, and a campaign of probes collects no data.
        total = sum(float(values[r]) for r in RATES)
        if total >= 1:
            field = next(r for r in RATES if r in changed)
            raise refuse(field, f"gold_rate + catch_rate + repeat_rate must be below 1, "
                                f"got {total:g}")
    if {"warn_after", "block_after"} & set(changed):
        warn, block = values["warn_after"], values["block_after"]
        if warn > block:
            field = "warn_after" if "warn_after" in changed else "block_after"
            raise refuse(field, f"raters are warned after {warn} failed probes but blocked "
                                f"after {block}: the warning must come first "
                                "(warn_after <= block_after)")
