"""Pages of higher apps that a campaign's page links to.

``annotation`` never imports the apps built on it; an app that has a page about a campaign
(quality control, ratings, snapshots in ``feedback``) registers it here from its
``AppConfig.ready``, and the campaign page lists what is registered.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.urls import reverse


@dataclass(frozen=True)
class CampaignLink:
    label: str
    url_name: str  # takes the campaign's slug, or nothing with ``by_slug`` off
    by_slug: bool = True


_LINKS: list[CampaignLink] = []


def campaign_link_register(*, label: str, url_name: str, by_slug: bool = True) -> None:
    link = CampaignLink(label, url_name, by_slug)
    if link not in _LINKS:
        _LINKS.append(link)


def campaign_links(slug: str) -> list[tuple[str, str]]:
    """(label, URL) of every registered page for the campaign ``slug``."""
    return [(link.label, reverse(link.url_name, args=[slug] if link.by_slug else []))
            for link in _LINKS]
