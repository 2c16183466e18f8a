"""Ratings from a real campaign's answers (feedback.services.ratings) and the ratings page."""

import uuid

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from annotation.models import CRITERIA, Enrollment, ItemMember, Judgment
from annotation.roles import RESEARCHER, role_add
from annotation.services.judgments import judgment_submit
from annotation.services.ordering import source_label
from annotation.services.scheduling import assignments_next
from feedback.models import QcDecision
from feedback.services.ratings import campaign_ratings
from tests.annotation.conftest import enrol, make_campaign, make_corpus


@pytest.fixture
def corpus(db):
    return make_corpus()


def make_researcher(name: str):
    user = get_user_model().objects.create_user(name, password=f"pw-{name}-1234")
    role_add(user, RESEARCHER)
    return user


def shown_labels(assignment) -> list[str]:
    """The sources of the candidates on screen, left to right (or in the group's order)."""
    members = {m.slot: m.candidate for m in ItemMember.objects.filter(
        item_id=assignment.item_id).select_related("candidate__policy_version")}
    return [source_label(members[slot]) for slot in assignment.order]


def rate_all(campaign, user, decide) -> int:
    """Answer every item the rater is given; ``decide(labels shown)`` gives the answer."""
    answered = 0
    for _ in range(200):
        result = assignments_next(rater=user, campaign_slug=campaign.slug)
        if result.state != "rating" or not result.assignments:
            break
        lease = result.assignments[0]
        judgment_submit(rater=user, token=str(lease.token), idempotency_key=uuid.uuid4(),
                        decision_ms=900, **decide(shown_labels(lease)))
        answered += 1
    return answered


def prefer(source: str):
    """Pairwise: choose ``source`` when it is shown, call it a tie otherwise."""
    def decide(labels: list[str]) -> dict:
        if source in labels:
            return {"choice": "left" if labels[0] == source else "right"}
        return {"choice": "tie"}
    return decide


def avoid(source: str):
    """Pairwise: choose against ``source`` when it is shown, a tie otherwise."""
    def decide(labels: list[str]) -> dict:
        if source in labels:
            return {"choice": "right" if labels[0] == source else "left"}
        return {"choice": "tie"}
    return decide


def test_a_source_that_always_wins_is_rated_first(corpus):
    # given raters who always pick the ground truth and call the baselines even
    campaign = make_campaign(corpus)
    answered = sum(rate_all(campaign, user, prefer("ground_truth")) for user in enrol(campaign, 2))
    assert answered > 10
    # when rated
    result = campaign_ratings(campaigns=[campaign])
    # then the ground truth is first, clearly, and wins every decisive judgment
    first, *rest = result.sources
    assert first["label"] == "ground_truth"
    assert all(first["lo"] > r["hi"] for r in rest)
    assert {r["label"] for r in rest} == {"baseline:jitter", "baseline:mistimed"}
    assert result.win_rate.labels[0] == "ground_truth"
    assert result.win_rate.matrix[0][1:] == [1.0, 1.0]
    assert result.win_rate.matrix[1][0] == 0.0 and result.win_rate.matrix[0][0] is None
    # the baselines only ever tied: the tie parameter is real, not half wins
    assert result.nu > 0 and result.win_rate.matrix[1][2] is None
    assert result.judgments == answered == Judgment.objects.filter(campaign=campaign).count()
    # and within each episode the ground-truth candidate is the strongest
    best = {}
    for row in result.candidates:  # strongest first
        best.setdefault(row["episode"], row["source"])
    assert set(best.values()) == {"ground_truth"} and len(best) == 6
    assert all(r["n"] > 0 for r in result.candidates)


def test_group_answers_are_folded_in_as_the_pairs_they_imply(corpus):
    # given group scoring where the ground truth scores 5 and both baselines 2 (a tie)
    campaign = make_campaign(corpus, protocol="group", group_size=3, slug="groups")

    def decide(labels: list[str]) -> dict:
        return {"scores": [dict.fromkeys(CRITERIA, 5 if label == "ground_truth" else 2)
                           for label in labels]}

    (user,) = enrol(campaign)
    answered = rate_all(campaign, user, decide)
    assert answered > 0
    # when rated, with bootstrap intervals
    result = campaign_ratings(campaigns=[campaign], rounds=20)
    # then each answer gave three pairs (two wins, one tie) and the ground truth leads
    assert result.judgments == answered and result.comparisons == 3 * answered
    assert result.sources[0]["label"] == "ground_truth"
    assert result.sources[0]["n"] == 2 * answered
    assert result.nu > 0
    assert result.interval == "bootstrap" and result.rounds == 20
    jitter, mistimed = sorted(result.sources[1:], key=lambda r: r["label"])
    assert abs(jitter["strength"] - mistimed["strength"]) < 1e-6


def test_judgments_of_excluded_raters_are_left_out_when_asked(corpus):
    # given a rater who always picks the ground truth and one who always picks against it
    campaign = make_campaign(corpus, slug="qc")
    good, bad = enrol(campaign, 2)
    rate_all(campaign, good, prefer("ground_truth"))
    n_bad = rate_all(campaign, bad, avoid("ground_truth"))
    enrollment = Enrollment.objects.get(campaign=campaign, rater=bad)
    QcDecision.objects.create(enrollment=enrollment, campaign=campaign, status="flagged",
                              reason="side bias")
    QcDecision.objects.create(enrollment=enrollment, campaign=campaign, status="excluded",
                              reason="gold accuracy 0.2 < 0.7")
    # when rated leaving excluded raters out, and keeping everyone
    kept = campaign_ratings(campaigns=[campaign])
    everyone = campaign_ratings(campaigns=[campaign], exclude_excluded=False)
    # then only the good rater's answers count in the first
    assert kept.left_out == n_bad and kept.judgments == everyone.judgments - n_bad
    assert kept.sources[0]["label"] == "ground_truth"
    assert kept.win_rate.matrix[0][1:] == [1.0, 1.0]
    assert everyone.left_out == 0
    gt = next(r for r in everyone.sources if r["label"] == "ground_truth")
    assert abs(gt["strength"]) < kept.sources[0]["strength"]
    # and a later decision (a researcher's override) counts the rater in again
    QcDecision.objects.create(enrollment=enrollment, campaign=campaign, status="trusted",
                              source="override", reason="checked by hand")
    again = campaign_ratings(campaigns=[campaign])
    assert again.left_out == 0 and again.judgments == everyone.judgments


def test_ratings_over_several_campaigns_and_without_answers(corpus):
    first = make_campaign(corpus, slug="first")
    second = make_campaign(corpus, slug="second")
    empty = campaign_ratings(campaigns=[first, second.pk])
    assert empty.judgments == 0 and all(r["lo"] is None for r in empty.sources)
    (user,) = enrol(second)
    n = rate_all(second, user, prefer("ground_truth"))
    both = campaign_ratings(campaigns=[first, second])
    assert both.judgments == n and both.sources[0]["label"] == "ground_truth"
    assert both.as_dict()["win_rate"]["labels"][0] == "ground_truth"
    with pytest.raises(ValueError, match="rounds"):
        campaign_ratings(campaigns=[first], rounds=-1)


def test_the_ratings_page_shows_plots_to_researchers_who_may_see_the_campaign(corpus, client):
    # given a researcher's campaign with answers, another researcher and a rater
    owner, stranger = make_researcher("owner"), make_researcher("stranger")
    campaign = make_campaign(corpus, created_by=owner)
    (rater,) = enrol(campaign)
    rate_all(campaign, rater, prefer("ground_truth"))
    url = reverse("feedback:ratings", args=[campaign.slug])
    assert url == f"/campaigns/{campaign.slug}/ratings/"
    # then nobody signed in is sent to log in
    assert client.get(url).status_code == 302
    # the rater and the other researcher get nothing, as if it did not exist
    for user in (rater, stranger):
        client.force_login(user)
        assert client.get(url).status_code == 404
    assert client.get(reverse("feedback:ratings", args=["no-such"])).status_code == 404
    # the owner sees the sources' interval plot, the win-rate heat map and the candidates
    client.force_login(owner)
    page = client.get(url)
    assert page.status_code == 200
    html = page.content.decode()
    assert html.count("<svg") == 2
    assert 'class="interval-plot"' in html and 'class="heat-map"' in html
    assert "ground_truth" in html and "baseline:jitter" in html
    assert "<title>ground_truth vs baseline:jitter: wins 100 % of decisive" in html
    assert html.count("<td>#") == len(campaign_ratings(campaigns=[campaign]).candidates)
    # and a researcher the campaign is shared with sees it too, with bootstrap intervals
    campaign.researchers.add(stranger)
    client.force_login(stranger)
    page = client.get(url, {"bootstrap": "1", "all": "1"})
    assert page.status_code == 200 and "bootstrap 95 % intervals" in page.content.decode()
