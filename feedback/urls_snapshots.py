"""The snapshots pages and API (included by feedback/urls.py)."""

urlpatterns: list = []
