from django.contrib import admin
from django.urls import include, path

from config.health import healthz

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("clips/", include("rendering.urls")),
    path("", include("annotation.urls")),
    path("", include("policy.urls")),
    path("", include("feedback.urls")),
]
