"""The measured server's URLs (``benchmarks.rating`` is its URLconf, see rating_settings.py): the
project's, and a view that does nothing but read the signed-in user, through DRF with the rater
token, through DRF with the session and through plain Django (the framework's floor)."""

from django.http import JsonResponse
from django.urls import path
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation.apis import RaterApi
from config.urls import urlpatterns as project_urlpatterns


class Nothing(APIView):
    def post(self, request):
        return Response({"user": request.user.pk})


class RaterNothing(RaterApi):
    def post(self, request):
        return Response({"user": request.user.pk})


def plain(request):
    return JsonResponse({"user": request.user.pk})


urlpatterns = [
    *project_urlpatterns,
    path("bench/floor/drf/", Nothing.as_view()),
    path("bench/floor/rater/", RaterNothing.as_view()),
    path("bench/floor/plain/", plain),
]
