"""The active order: serve first the items whose outcome is least certain.

Sources (policy versions, the ground truth, baselines) are rated by Bradley–Terry with ties
(Davidson's model, ``annotation.bradley_terry``, the one implementation the researchers'
ratings use too) from the campaign's regular pairwise judgments so far; a tie is a tie, not half
a win each way; "both bad" says nothing about order and is left out. An item's priority is the
outcome variance under those ratings, 4·p·(1 − p) for p = P(a beats b), shrunk by the answers it
already has: 1/√(1 + n). Items that
compare two samples of the same source sit at p = ½. Group items use the spread of their
members' ratings the same way (the closest pair decides).
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict

import numpy as np
from django.db import transaction
from django.db.models import Max

from annotation import bradley_terry as bt
from annotation.models import Campaign, CampaignStatus, Item, ItemMember, Judgment, Probe
from policy.models import Candidate, CandidateSource

logger = logging.getLogger(__name__)


def source_label(candidate: Candidate) -> str:
    if candidate.source == CandidateSource.POLICY:
        return f"policy:{candidate.policy_version.name}"
    if candidate.source == CandidateSource.GROUND_TRUTH:
        return "ground_truth"
    return f"baseline:{candidate.baseline}"


def bradley_terry(wins: dict[tuple[str, str], float], *, iterations: int = 200,
                  prior: float = 1.0,
                  ties: dict[tuple[str, str], float] | None = None) -> dict[str, float]:
    """Log-strengths (mean 0) by ``annotation.bradley_terry``: ``wins[(i, j)]`` is how often i
    beat j, ``ties[(i, j)]`` how often they tied. ``prior`` is the precision of the Gaussian
    prior on each log-strength (the fit's ridge): 1.0, a standard deviation of 1, keeps the
    order of a young campaign from swinging on its first answers and unbeaten sources finite.
    ``iterations`` bounds the Newton steps."""
    players = sorted({p for pair in [*wins, *(ties or {})] for p in pair})
    if not players:
        return {}
    index = {p: k for k, p in enumerate(players)}

    def arrays(counts: dict[tuple[str, str], float]) -> tuple[list, list, list]:
        rows = [(index[a], index[b], c) for (a, b), c in counts.items() if a != b and c > 0]
        return [r[0] for r in rows], [r[1] for r in rows], [float(r[2]) for r in rows]

    winners, losers, weights = arrays(wins)
    tie_a, tie_b, tie_weights = arrays(ties or {})
    fitted = bt.fit(np.array(winners, dtype=np.int64), np.array(losers, dtype=np.int64),
                    np.array(tie_a, dtype=np.int64), np.array(tie_b, dtype=np.int64),
                    weights=weights, tie_weights=tie_weights, n_players=len(players),
                    ridge=prior, max_iter=iterations)
    return {p: float(fitted.strengths[k]) for p, k in index.items()}


def _p(ra: float, rb: float) -> float:
    return 1.0 / (1.0 + math.exp(rb - ra))


@transaction.atomic
def campaign_reprioritise(*, campaign_id: int) -> int:
    """Recompute the ratings and every open item's priority; returns the items updated."""
    campaign = Campaign.objects.select_for_update(no_key=True).filter(pk=campaign_id).first()
    if campaign is None:
        return 0
    last = Judgment.objects.filter(campaign=campaign).aggregate(m=Max("id"))["m"] or 0
    members = defaultdict(list)
    for m in (ItemMember.objects.filter(item__campaign=campaign, item__probe=Probe.NONE)
              .select_related("candidate__policy_version").order_by("item_id", "slot")):
        members[m.item_id].append(source_label(m.candidate))
    wins: dict[tuple[str, str], float] = defaultdict(float)
    ties: dict[tuple[str, str], float] = defaultdict(float)
    for item_id, outcome in Judgment.objects.filter(
            campaign=campaign, probe=Probe.NONE).exclude(outcome="").values_list(
            "item_id", "outcome"):
        a, b = members[item_id][0], members[item_id][1]
        if a == b or outcome == "both_bad":
            continue
        if outcome == "a":
            wins[(a, b)] += 1
        elif outcome == "b":
            wins[(b, a)] += 1
        else:
            ties[(a, b)] += 1
    ratings = bradley_terry(wins, ties=ties)
    items = list(Item.objects.filter(campaign=campaign, probe=Probe.NONE,
                                     n_judgments__lt=campaign.overlap))
    for item in items:
        labels = members[item.pk]
        r = [ratings.get(lab, 0.0) for lab in labels]
        gap = min(abs(x - y) for i, x in enumerate(r) for y in r[i + 1:]) if len(r) > 1 else 0.0
        p = _p(gap, 0.0)
        item.priority = 4 * p * (1 - p) / math.sqrt(1 + item.n_judgments)
    Item.objects.bulk_update(items, ["priority"], batch_size=500)
    campaign.ratings = {k: round(v, 4) for k, v in ratings.items()}
    campaign.prioritised_upto = last
    campaign.save(update_fields=["ratings", "prioritised_upto"])
    logger.info("campaign %s: %d items reprioritised from judgments up to #%d",
                campaign.slug, len(items), last)
    return len(items)


def campaigns_needing_priorities() -> list[int]:
    """Active campaigns with judgments newer than their priorities."""
    out = []
    for campaign in Campaign.objects.filter(status=CampaignStatus.ACTIVE, active_order=True):
        if Judgment.objects.filter(campaign=campaign, pk__gt=campaign.prioritised_upto).exists():
            out.append(campaign.pk)
    return out
