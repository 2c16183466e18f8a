"""The project's JSON parser: DRF's, with a bound on nesting.

A body nested deeper than the interpreter's recursion limit makes ``json.loads`` raise
``RecursionError``, which DRF does not catch (a 500). No body this API reads nests more than a
few levels, so anything past ``MAX_DEPTH`` is refused as a 400 before a view sees it, whether or
not the parser got through it.
"""

from __future__ import annotations

import json

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

MAX_DEPTH = 64  # arrays and objects inside one another; answers and campaigns use under 5
TOO_DEEP = f"the JSON body is too deeply nested (at most {MAX_DEPTH} levels)"


class TooDeep(ValueError):
    """A JSON text nested past ``MAX_DEPTH`` (a ``ValueError``, as other malformed JSON)."""

    def __init__(self) -> None:
        super().__init__(TOO_DEEP)


def depth_check(value: object) -> None:
    """Raise ``TooDeep`` if ``value`` (parsed JSON) nests past ``MAX_DEPTH``. Iterative: the
    check itself must not recurse."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            node = node.values()
        elif not isinstance(node, list):
            continue
        if depth > MAX_DEPTH:
            raise TooDeep
        stack.extend((child, depth + 1) for child in node if isinstance(child, dict | list))


def loads(text: str, **kwargs) -> object:
    """``json.loads`` that raises ``TooDeep`` (a ``ValueError``) for a body nested too deep."""
    try:
        value = json.loads(text, **kwargs)
    except RecursionError:
        raise TooDeep from None
    # Nesting past MAX_DEPTH needs more brackets than that (counted in C, strings included):
    # the rate page's answers, a few levels deep, are not walked.
    if text.count("[") + text.count("{") > MAX_DEPTH:
        depth_check(value)
    return value


class BoundedJSONParser(JSONParser):
    """DRF's JSON parser; a body nested past ``MAX_DEPTH`` is a 400 in the API's error shape."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            value = super().parse(stream, media_type, parser_context)
            depth_check(value)
        except (RecursionError, TooDeep):
            raise ParseError({"error": "invalid", "detail": TOO_DEEP}) from None
        return value
