"""The ratings pages and API (included by feedback/urls.py)."""

from django.urls import path

from feedback.views import ratings

urlpatterns = [
    path("campaigns/<slug:slug>/ratings/", ratings.campaign_ratings_page, name="ratings"),
]
