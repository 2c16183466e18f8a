"""The project's URLs plus the clip URLs at clips/, as config/urls.py includes them."""

from django.urls import include, path

from config.urls import urlpatterns as project_urls

urlpatterns = [
    *[p for p in project_urls if str(p.pattern) != "clips/"],
    path("clips/", include("rendering.urls")),
]
