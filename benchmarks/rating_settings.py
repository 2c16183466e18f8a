"""Settings for the server that ``python -m benchmarks.rating`` measures: the project's own
settings (config/settings.py, from the same environment) with a URLconf that adds do-nothing
views (``/bench/floor/...``, for the cost of the framework itself; see benchmarks/rating/urls.py).

The server runs ``benchmarks.rating_settings:application``: the project's WSGI application
(config/wsgi.py, the rating fast path in front of Django) wrapped so that every response carries
``X-Bench: <µs in the application>;<queries>;<µs in the database>``. The load generator splits
each request's time with it into the time spent waiting (listen queue, network, client) and the
time spent in the application, and that again into SQL and Python. Its own cost is a clock read
per request and a wrapper call per query (a few µs).
"""

import time

from django.db import connections

from config.settings import *  # noqa: F403

# The project's URLs and do-nothing views for the framework's floor (benchmarks/rating/urls.py).
ROOT_URLCONF = "benchmarks.rating"
WSGI_APPLICATION = "benchmarks.rating_settings.application"  # runserver's, timed too


def _timed(app):
    def timed(environ, start_response):
        stats = [0, 0]  # queries, ns in the database
        got: list = []

        def wrapper(execute, sql, params, many, context):
            t = time.perf_counter_ns()
            try:
                return execute(sql, params, many, context)
            finally:
                stats[0] += 1
                stats[1] += time.perf_counter_ns() - t

        def hold(status, headers, exc_info=None):
            got[:] = [status, headers, exc_info]

        t0 = time.perf_counter_ns()
        with connections["default"].execute_wrapper(wrapper):
            body = app(environ, hold)
        total = time.perf_counter_ns() - t0
        status, headers, exc_info = got
        start_response(status, [*headers, ("X-Bench", f"{total // 1000};{stats[0]};"
                                                      f"{stats[1] // 1000}")], exc_info)
        return body

    return timed


def __getattr__(name: str):
    if name != "application":
        raise AttributeError(name)
    from config.wsgi import application

    return _timed(application)
