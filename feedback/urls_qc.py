"""The qc pages and API (included by feedback/urls.py)."""

from django.urls import path

from feedback.apis import qc as apis
from feedback.views import qc as views

urlpatterns: list = [
    path("campaigns/<slug:slug>/quality/", views.quality, name="quality"),
    path("api/campaigns/<slug:slug>/qc/", apis.QcApi.as_view(), name="api-qc"),
    path("api/campaigns/<slug:slug>/raters/<uuid:pseudonym>/status/",
         apis.RaterStatusApi.as_view(), name="api-rater-status"),
]
