from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from policy.selectors import dataset_list, policy_version_list


def home(request: HttpRequest) -> HttpResponse:
    """The front door: what the platform holds and where to go next."""
    datasets = list(dataset_list()) if request.user.is_staff else []
    versions = list(policy_version_list()) if request.user.is_staff else []
    total = sum(d.episode_count for d in datasets)
    return render(
        request,
        "policy/home.html",
        {"datasets": datasets, "episode_total": total, "versions": versions},
    )
