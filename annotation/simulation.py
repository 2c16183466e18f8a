"""Simulated raters: oracle-based answers through the real rating path.

A simulated rater "watches" an item by looking up, on the server side, what a person would see
(the candidates in the order shown) and scoring each with the synthetic corpus's oracle. It then
answers through the same calls a browser makes: in process through the services the API views
call, or over HTTP against a running server (``HttpTransport``), with sessions, CSRF, leases,
heartbeats and idempotency keys like the rater page.

Kinds: ``careful`` (follows the oracle, says tie when it cannot tell, both bad when both are
poor), ``noisy`` (Bradley–Terry choice with a temperature), ``left-biased`` (presses left 70 % of
the time), ``random``.

A rater's random stream (``Rater.rng``, seeded by the command's ``--seed``) fixes its choices and
timings; it never makes an idempotency key. Each answer gets a fresh ``uuid4`` key, so a second
run with the same seed against the same campaign is not mistaken for a replay of the first
(``key_reused``); a key is sent again only when the same answer is retried.
"""

from __future__ import annotations

import json
import re
import uuid
from functools import lru_cache

from annotation.models import Assignment, Protocol
from annotation.simulated_judge import KINDS, SimulatedJudge  # noqa: F401 (KINDS: callers)


@lru_cache(maxsize=4096)
def _oracle_total(array_sha: str, episode_id: int) -> float:
    from policy.models import Episode
    from policy.oracle import EpisodeContext, oracle_score
    from rendering import blobs

    ep = Episode.objects.get(pk=episode_id)
    if not ep.meta.get("sentences"):
        raise ValueError(f"episode {ep.key} has no oracle context: simulated raters need the "
                         "synthetic corpus")
    ctx = EpisodeContext.from_meta(ep.meta, fps=ep.fps, n_frames=ep.n_frames)
    return oracle_score(blobs.load_array(array_sha), ctx).total


def shown_scores(token: str) -> tuple[str, list[float]]:
    """(protocol, oracle total of each clip in the order shown) for one exposure."""
    a = (Assignment.objects.select_related("campaign", "item")
         .prefetch_related("item__members__candidate").get(token=token))
    members = {m.slot: m.candidate for m in a.item.members.all()}
    scores = [_oracle_total(members[slot].array_sha, a.item.episode_id) for slot in a.order]
    return a.campaign.protocol, scores


class Rater(SimulatedJudge):
    """A simulated rater that answers exposures (see ``SimulatedJudge`` for how it decides)."""

    def answer(self, token: str, *, ask_strength: bool = True) -> dict:
        """The JSON body a browser would send for this exposure, under a new idempotency key
        (to retry it, send this same body again)."""
        protocol, scores = shown_scores(token)
        body: dict = {"idempotency_key": str(uuid.uuid4()),  # not from rng: see the module
                      "decision_ms": self.rng.randint(800, 6000),
                      "viewing_ms": self.rng.randint(8000, 20000),
                      "playback": {"events": [], "plays": 1, "simulated": self.kind}}
        if protocol == Protocol.GROUP:
            body["scores"] = self._scores(scores)
            return body
        choice, strength = self._choice(scores[0], scores[1])
        body["choice"] = choice
        if ask_strength and strength and choice in ("left", "right"):
            body["strength"] = strength
        return body

    def _choice(self, left: float, right: float) -> tuple[str, int | None]:
        return self.choice(left, right)

    def _scores(self, totals: list[float]) -> list[dict[str, int]]:
        return self.scores(totals)


def rate_page_config(html: str) -> dict:
    """What the rate page hands its script (``rate-config``: the API URLs, the rater token, ...)."""
    found = re.search(r'<script id="rate-config" type="application/json">(.*?)</script>', html,
                      re.S)
    if found is None:
        raise ValueError("not a rate page: no rate-config")
    return json.loads(found.group(1))


class HttpTransport:
    """A rater's browser session against a running server: invite, CSRF, the three calls."""

    def __init__(self, base_url: str, *, timeout: float = 30.0, token: bool = False) -> None:
        """``token``: send the rating calls as the rate page does, with the rater token it is
        handed (otherwise with the session cookie and the CSRF token)."""
        import httpx

        self.client = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout,
                                   follow_redirects=False)
        self.use_token = token
        self.token = ""

    def join(self, invite_path: str, participant: str = "", crowd_param: str = "") -> None:
        params = {crowd_param: participant} if crowd_param and participant else {}
        page = self.client.get(invite_path, params=params)
        page.raise_for_status()
        data = {"csrfmiddlewaretoken": self.client.cookies.get("csrftoken"), "consent": "1",
                **params}
        res = self.client.post(invite_path, data=data, headers={"Referer": str(page.url)})
        if res.status_code != 302:
            raise RuntimeError(f"joining through {invite_path} answered {res.status_code}")
        if self.use_token:  # the rate page it is sent to hands its script the token
            page = self.client.get(res.headers["location"])
            page.raise_for_status()
            self.token = rate_page_config(page.text)["token"]

    def _post(self, path: str, body: dict | None = None):
        if self.use_token:
            headers = {"Authorization": f"Rater {self.token}"}
        else:
            headers = {"X-CSRFToken": self.client.cookies.get("csrftoken") or "",
                       "Referer": str(self.client.base_url) + "/"}
        return self.client.post(path, json=body, headers=headers)

    def next(self, slug: str):
        return self._post(f"/api/rate/{slug}/next/")

    def heartbeat(self, token: str):
        return self._post(f"/api/assignments/{token}/heartbeat/")

    def submit(self, token: str, body: dict):
        return self._post(f"/api/assignments/{token}/judgment/", body)

    def close(self) -> None:
        self.client.close()
