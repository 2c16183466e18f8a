from django.contrib import admin
from django.urls import include, path

from annotation.views import admin_sign_in
from config.health import healthz

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    # The admin's sign-in form, throttled (before the admin's own URLs, which it replaces).
    path("admin/login/", admin_sign_in),
    path("admin/", admin.site.urls),
    path("clips/", include("rendering.urls")),
    path("", include("annotation.urls")),
    path("", include("policy.urls")),
    path("", include("feedback.urls")),
]
