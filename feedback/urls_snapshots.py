"""The snapshots pages and API (included by feedback/urls.py)."""

from django.urls import path

from feedback.apis import snapshots as apis
from feedback.views import snapshots as views

urlpatterns = [
    path("snapshots/", views.snapshot_list, name="snapshots"),
    path("snapshots/<int:snapshot_id>/", views.snapshot_detail, name="snapshot"),
    path("api/snapshots/", apis.SnapshotListApi.as_view(), name="api-snapshots"),
    path("api/snapshots/<int:snapshot_id>/", apis.SnapshotDetailApi.as_view(),
         name="api-snapshot"),
    path("api/snapshots/<int:snapshot_id>/archive/", apis.SnapshotArchiveApi.as_view(),
         name="api-snapshot-archive"),
]
