"""Included at ``clips/`` by config/urls.py."""

from django.urls import path

from rendering import views

app_name = "rendering"

urlpatterns = [
    path("<str:token>/", views.clip_media, name="clip-media"),
]
