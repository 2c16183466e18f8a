"""The rounds pages and API (included by feedback/urls.py)."""

from django.urls import path

from feedback.apis import rounds as apis
from feedback.views import rounds as views

urlpatterns = [
    path("rounds/", views.round_list, name="rounds"),
    path("rounds/<int:round_id>/", views.round_detail, name="round"),
    path("rounds/<int:round_id>/action/", views.round_action, name="round-action"),
    path("lineages/<slug:lineage>/", views.lineage, name="lineage"),
    path("versions/compare/", views.version_compare, name="compare"),
    path("api/rounds/", apis.RoundListApi.as_view(), name="api-rounds"),
    path("api/rounds/<int:round_id>/", apis.RoundDetailApi.as_view(), name="api-round"),
    path("api/rounds/<int:round_id>/action/", apis.RoundActionApi.as_view(),
         name="api-round-action"),
    path("api/lineages/<slug:lineage>/rollback/", apis.RollbackApi.as_view(),
         name="api-rollback"),
]
