"""The active order: serve first the items whose outcome is least certain.

Sources (policy versions, the ground truth, baselines) are rated by Bradley–Terry from the
campaign's regular judgments so far (ties count half a win each way; "both bad" says nothing
about order and is left out). An item's priority is the outcome variance under those ratings,
4·p·(1 − p) for p = P(a beats b), shrunk by the answers it already has: 1/√(1 + n). Items that
compare two samples of the same source sit at p = ½. Group items use the spread of their
members' ratings the same way (the closest pair decides).
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict

from django.db import transaction
from django.db.models import Max

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
                  prior: float = 1.0) -> dict[str, float]:
    """Log-strengths by the MM algorithm; ``wins[(i, j)]`` is how often i beat j. A prior of
    ``prior`` virtual ties with every other player keeps unseen and unbeaten players finite."""
    players = sorted({p for pair in wins for p in pair})
    if not players:
        return {}
    w = defaultdict(float)
    n = defaultdict(float)
    for (i, j), count in wins.items():
        w[i] += count
        n[(i, j)] += count
        n[(j, i)] += count
    for i in players:
        for j in players:
            if i != j:  # virtual half-win each way
                w[i] += prior / 2
                n[(i, j)] += prior / 2
    strength = dict.fromkeys(players, 1.0)
    for _ in range(iterations):
        new = {}
        for i in players:
            denom = sum(n[(i, j)] / (strength[i] + strength[j]) for j in players if j != i)
            new[i] = w[i] / denom if denom > 0 else strength[i]
        g = math.exp(sum(math.log(v) for v in new.values()) / len(new))
        strength = {k: v / g for k, v in new.items()}
    return {k: math.log(v) for k, v in strength.items()}


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
            wins[(a, b)] += 0.5
            wins[(b, a)] += 0.5
    ratings = bradley_terry(wins)
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
