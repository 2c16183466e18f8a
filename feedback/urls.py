"""Researcher pages and API of quality control, ratings and snapshots."""

from django.urls import include, path

app_name = "feedback"

urlpatterns = [
    path("", include("feedback.urls_qc")),
    path("", include("feedback.urls_ratings")),
    path("", include("feedback.urls_snapshots")),
    path("", include("feedback.urls_rounds")),
]
