"""The rate page's own calls, served in front of Django.

A rater answering at speed makes two requests per item (a heartbeat and the answer, whose reply
carries the next items), and those are nearly all the site's traffic while a campaign runs.
Through Django and DRF each of them paid for the middleware, URL resolution, request objects and
content negotiation: measured under load, more CPU than the rating work itself. This WSGI
wrapper answers exactly those requests straight from ``annotation.rater_calls``, the functions the
REST views answer with, and hands everything else to Django untouched.

It takes a request only when it can answer it as the API would: a ``POST`` to one of the three
rating URLs, a valid rater token (``Authorization: Rater ...``), an allowed host, no HTTPS
redirect due, and, for an answer, a body within ``DATA_UPLOAD_MAX_MEMORY_SIZE`` that is UTF-8
JSON. Anything else, a forged or expired token included, goes to Django, which answers it (401,
400, 413, ...) in the usual way. Its replies carry the headers Django's security middleware
would add. Switch it off with ``RATING_FAST_PATH=0``.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Callable, Iterable

from django.conf import settings
from django.core import signals, signing
from django.core.handlers.wsgi import get_script_name
from django.http.request import split_domain_port, validate_host
from django.urls import set_script_prefix
from rest_framework.utils.encoders import JSONEncoder

from annotation import parsers
from annotation.apis import RaterPrincipal
from annotation.rater_calls import Reply, call_heartbeat, call_judgment, call_next
from annotation.services.enrollment import rater_token_read

logger = logging.getLogger("django.request")

# annotation/urls.py: api-next, api-heartbeat, api-judgment (a test checks they agree).
_UUID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_ROUTE = re.compile(r"/api/(?:rate/(?P<slug>[-a-zA-Z0-9_]+)/next"
                    rf"|assignments/(?P<token>{_UUID})/(?P<call>heartbeat|judgment))/")
_KEYWORD = "Rater "
_STATUS = {200: "200 OK", 201: "201 Created", 400: "400 Bad Request", 403: "403 Forbidden",
           404: "404 Not Found", 409: "409 Conflict", 410: "410 Gone",
           500: "500 Internal Server Error"}
_encoder = JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)

StartResponse = Callable[..., object]
WSGIApp = Callable[[dict, StartResponse], Iterable[bytes]]


def _headers(secure: bool) -> list[tuple[str, str]]:
    """What RaterApi, SecurityMiddleware and XFrameOptionsMiddleware add to a JSON reply, per
    settings."""
    out = [("Cache-Control", "no-store")]  # as apis.NotCached: token-bound data
    if settings.SECURE_CONTENT_TYPE_NOSNIFF:
        out.append(("X-Content-Type-Options", "nosniff"))
    if settings.SECURE_REFERRER_POLICY:
        policy = settings.SECURE_REFERRER_POLICY
        out.append(("Referrer-Policy", policy if isinstance(policy, str) else ",".join(policy)))
    if settings.SECURE_CROSS_ORIGIN_OPENER_POLICY:
        out.append(("Cross-Origin-Opener-Policy", settings.SECURE_CROSS_ORIGIN_OPENER_POLICY))
    out.append(("X-Frame-Options", getattr(settings, "X_FRAME_OPTIONS", "DENY").upper()))
    if secure and settings.SECURE_HSTS_SECONDS:
        hsts = f"max-age={settings.SECURE_HSTS_SECONDS}"
        if settings.SECURE_HSTS_INCLUDE_SUBDOMAINS:
            hsts += "; includeSubDomains"
        if settings.SECURE_HSTS_PRELOAD:
            hsts += "; preload"
        out.append(("Strict-Transport-Security", hsts))
    return out


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")  # as DRF's parser: NaN and Infinity are refused


class RatingFastPath:
    """WSGI middleware: ``RatingFastPath(django_application)``."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app
        self.enabled = bool(getattr(settings, "RATING_FAST_PATH", True))
        self._proxy_ssl = settings.SECURE_PROXY_SSL_HEADER
        self._headers = {secure: _headers(secure) for secure in (False, True)}

    def __call__(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        route = self._route(environ) if self.enabled else None
        if route is None:
            return self.app(environ, start_response)
        rater, call, arg, secure = route
        body = None
        if call == "judgment":
            ok, body = self._body(environ)
            if not ok:
                return self.app(environ, start_response)
        set_script_prefix(get_script_name(environ))
        # Django's request signals, as its handler sends them (they recycle database
        # connections past their age, among others).
        signals.request_started.send(sender=self.__class__, environ=environ)
        try:
            status, data = self._answer(rater, call, arg, body)
        except Exception:
            logger.exception("Internal Server Error: %s", environ["PATH_INFO"],
                             extra={"status_code": 500})
            signals.got_request_exception.send(sender=self.__class__, request=None)
            status, data = 500, {"error": "server_error", "detail": "server error"}
        finally:
            signals.request_finished.send(sender=self.__class__)
        if 400 <= status < 500:  # as Django logs them
            logger.warning("%s: %s", _STATUS.get(status, f"{status} Client Error")[4:],
                           environ["PATH_INFO"], extra={"status_code": status})
        # (as DRF's renderer: the two line separators JavaScript strings once could not hold)
        payload = (_encoder.encode(data).replace("\u2028", "\\u2028")
                   .replace("\u2029", "\\u2029").encode())
        start_response(_STATUS.get(status, f"{status} Unknown"), [
            ("Content-Type", "application/json"), ("Content-Length", str(len(payload))),
            *self._headers[secure]])
        return [payload]

    def _route(self, environ: dict) -> tuple[RaterPrincipal, str, str, bool] | None:
        """(rater, call, slug or lease, secure) when this request is one to take."""
        if environ.get("REQUEST_METHOD") != "POST":
            return None
        auth = environ.get("HTTP_AUTHORIZATION", "")
        if not auth.startswith(_KEYWORD):
            return None
        match = _ROUTE.fullmatch(environ.get("PATH_INFO", ""))
        if match is None:
            return None
        secure = self._secure(environ)
        if settings.SECURE_SSL_REDIRECT and not secure:
            return None
        if "HTTP_HOST" not in environ or settings.USE_X_FORWARDED_HOST:
            return None  # Django's rules for these
        domain, _ = split_domain_port(environ["HTTP_HOST"])
        allowed = settings.ALLOWED_HOSTS or (
            [".localhost", "127.0.0.1", "[::1]"] if settings.DEBUG else [])
        if not domain or not validate_host(domain, allowed):
            return None
        try:
            rater_id, campaign_id = rater_token_read(auth[len(_KEYWORD):].strip())
        except signing.BadSignature:  # expired ones too: DRF answers 401 with the reason
            return None
        rater = RaterPrincipal(rater_id, campaign_id)
        if match["slug"] is not None:
            return rater, "next", match["slug"], secure
        return rater, match["call"], match["token"], secure

    def _secure(self, environ: dict) -> bool:
        if self._proxy_ssl:  # as HttpRequest.is_secure
            header, value = self._proxy_ssl
            got = environ.get(header)
            if got is not None:
                return got.split(",", 1)[0].strip() == value
        return environ.get("wsgi.url_scheme") == "https"

    @staticmethod
    def _body(environ: dict) -> tuple[bool, object]:
        """(True, the parsed JSON) or (False, None) to leave the request to Django, with its
        body readable again."""
        content_type, _, params = environ.get("CONTENT_TYPE", "").partition(";")
        charset = params.partition("charset=")[2].split(";")[0].strip().strip('"').lower()
        if content_type.strip().lower() != "application/json" or charset not in ("", "utf-8"):
            return False, None
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return False, None
        if length <= 0:
            return False, None
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if limit is not None and length > limit:
            return False, None
        raw = environ["wsgi.input"].read(length)
        environ["wsgi.input"] = io.BytesIO(raw)  # for Django, if it gets the request after all
        try:  # as the API's parser: strict UTF-8 (no byte-order mark), no NaN, bounded depth
            return True, parsers.loads(raw.decode("utf-8"), parse_constant=_no_constant)
        except ValueError:  # TooDeep among them: Django's parser answers it
            return False, None

    @staticmethod
    def _answer(rater: RaterPrincipal, call: str, arg: str, body: object) -> Reply:
        if call == "next":
            return call_next(rater, arg, rater.campaign_id)
        if call == "heartbeat":
            return call_heartbeat(rater, arg, rater.campaign_id)
        return call_judgment(rater, arg, body, rater.campaign_id)
