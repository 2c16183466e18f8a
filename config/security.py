"""A Content-Security-Policy on every HTML page.

The pages load their scripts from static files (the rate page's configuration is a
``json_script`` data block, which CSP does not run; a button that asks before it acts carries
``data-confirm``, which annotation/static/annotation/site.js reads, not an ``onclick``), so
scripts need no 'unsafe-inline'. Styles do: templates set widths and colours in ``style``
attributes (progress meters, status colours).
"""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

POLICY = "; ".join([
    "default-src 'self'",
    "img-src 'self' data:",
    "media-src 'self' blob:",
    "style-src 'self' 'unsafe-inline'",  # style="width: …%" attributes in the templates
    "script-src 'self'",
    "object-src 'none'",
    "base-uri 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])
# The API documentation pages (drf-spectacular's templates) start Swagger UI and ReDoc with an
# inline script, and ReDoc runs a worker from a blob: those two pages only get these.
DOCS_POLICY = POLICY.replace("script-src 'self'", "script-src 'self' 'unsafe-inline'; "
                                                  "worker-src 'self' blob:")
DOCS_VIEWS = {"annotation:api-docs", "annotation:api-redoc"}


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if ("Content-Security-Policy" not in response
                and response.get("Content-Type", "").startswith("text/html")):
            match = getattr(request, "resolver_match", None)
            docs = match is not None and match.view_name in DOCS_VIEWS
            response["Content-Security-Policy"] = DOCS_POLICY if docs else POLICY
        return response
