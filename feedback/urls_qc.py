"""The qc pages and API (included by feedback/urls.py)."""

urlpatterns: list = []
