"""The campaign page links to the feedback pages about it, which annotation never imports."""

from django.test import Client
from django.urls import reverse

from tests.annotation.conftest import make_campaign


def test_the_campaign_page_links_to_quality_ratings_and_snapshots(corpus, researcher):
    # given: a researcher's campaign
    campaign = make_campaign(corpus, created_by=researcher)
    client = Client()
    client.force_login(researcher)
    # when
    page = client.get(reverse("annotation:campaign", args=[campaign.slug])).content.decode()
    # then: each page registered by feedback is linked, and answers
    for name, args in (("feedback:quality", [campaign.slug]),
                       ("feedback:ratings", [campaign.slug]), ("feedback:snapshots", [])):
        url = reverse(name, args=args)
        assert f'href="{url}"' in page, name
        assert client.get(url).status_code == 200, name
