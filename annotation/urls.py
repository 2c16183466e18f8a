"""Included at the site root by config/urls.py."""

from django.contrib.auth.views import LogoutView
from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from annotation import apis, views

app_name = "annotation"

urlpatterns = [
    # Signing in and out (settings.LOGIN_URL); raters are signed in by their invite link.
    path("accounts/login/", views.sign_in, name="sign-in"),
    path("accounts/logout/", LogoutView.as_view(), name="sign-out"),  # POST only
    # Raters.
    path("rate/invite/<str:token>/", views.invite, name="invite"),
    path("rate/<slug:slug>/", views.rate, name="rate"),
    path("media/<str:token>/<str:name>/", views.media, name="media"),
    # Researchers.
    path("campaigns/", views.campaign_list, name="campaigns"),
    path("campaigns/new/", views.campaign_new, name="campaign-new"),
    path("campaigns/<slug:slug>/", views.campaign_detail, name="campaign"),
    # API.
    path("api/rate/<slug:slug>/next/", apis.NextApi.as_view(), name="api-next"),
    path("api/rate/<slug:slug>/consent/", apis.ConsentApi.as_view(), name="api-consent"),
    path("api/assignments/<uuid:token>/heartbeat/", apis.HeartbeatApi.as_view(),
         name="api-heartbeat"),
    path("api/assignments/<uuid:token>/judgment/", apis.JudgmentApi.as_view(),
         name="api-judgment"),
    path("api/campaigns/", apis.CampaignListApi.as_view(), name="api-campaigns"),
    path("api/campaigns/<slug:slug>/", apis.CampaignDetailApi.as_view(), name="api-campaign"),
    path("api/campaigns/<slug:slug>/progress/", apis.CampaignProgressApi.as_view(),
         name="api-campaign-progress"),
    path("api/campaigns/<slug:slug>/status/", apis.CampaignStatusApi.as_view(),
         name="api-campaign-status"),
    path("api/campaigns/<slug:slug>/invites/", apis.InviteApi.as_view(),
         name="api-campaign-invites"),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="annotation:api-schema"),
         name="api-docs"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="annotation:api-schema"),
         name="api-redoc"),
]
