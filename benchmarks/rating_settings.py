"""Settings for the server that ``python -m benchmarks.rating`` measures: the project's own
settings (config/settings.py, from the same environment) plus one measuring middleware and one
do-nothing view (``/bench/floor/drf/``, for the cost of the framework itself).

The middleware adds a header ``X-Bench: <µs in the worker>;<queries>;<µs in the database>`` to
every response, so the load generator can split each request's time into the time spent waiting
(listen queue, network, client) and the time spent in Django, and that again into SQL and
Python. Its own cost is a clock read per request and a wrapper call per query (a few µs).
"""

import time

from django.db import connections

from config.settings import *  # noqa: F403
from config.settings import MIDDLEWARE

MIDDLEWARE = ["benchmarks.rating_settings.timing_middleware", *MIDDLEWARE]
# The project's URLs and a do-nothing view for the framework's floor (see rating.py).
ROOT_URLCONF = "benchmarks.rating"


def timing_middleware(get_response):
    def middleware(request):
        stats = [0, 0]  # queries, ns in the database

        def wrapper(execute, sql, params, many, context):
            t = time.perf_counter_ns()
            try:
                return execute(sql, params, many, context)
            finally:
                stats[0] += 1
                stats[1] += time.perf_counter_ns() - t

        t0 = time.perf_counter_ns()
        with connections["default"].execute_wrapper(wrapper):
            response = get_response(request)
        total = time.perf_counter_ns() - t0
        response["X-Bench"] = f"{total // 1000};{stats[0]};{stats[1] // 1000}"
        return response

    return middleware
