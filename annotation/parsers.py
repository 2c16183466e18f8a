"""The project's JSON parser: DRF's, with a bound on nesting.

A body nested deeper than the interpreter's recursion limit makes ``json.loads`` raise
``RecursionError``, which DRF does not catch (a 500). No body this API reads nests more than a
few levels, so anything past ``MAX_DEPTH`` is refused as a 400 before a view sees it, whether or
not the parser got through it. Django's form ``JSONField`` (the admin's JSON settings) has the
same problem: ``BoundedJSONDecoder`` is its decoder there.
"""

from __future__ import annotations

import json

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

MAX_DEPTH = 64  # arrays and objects inside one another; answers and campaigns use under 5
TOO_DEEP = f"the JSON is too deeply nested (at most {MAX_DEPTH} levels)"


class TooDeep(json.JSONDecodeError):
    """A JSON text nested past ``MAX_DEPTH``: malformed JSON as far as a caller is concerned, so
    code that handles ``JSONDecodeError`` (or ``ValueError``) refuses it as such."""

    def __init__(self, doc: str = "") -> None:
        super().__init__(TOO_DEEP, doc, 0)
        self.args = (TOO_DEEP,)  # no "line 1 column 1": the position says nothing here


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
    """``json.loads`` that raises ``TooDeep`` (a ``JSONDecodeError``) for a text nested too
    deep."""
    return BoundedJSONDecoder(**kwargs).decode(text)


class BoundedJSONDecoder(json.JSONDecoder):
    """``json.JSONDecoder`` that raises ``TooDeep`` for a text nested past ``MAX_DEPTH``, for
    code that takes a decoder class (``forms.JSONField(decoder=...)``)."""

    def decode(self, s: str, *args) -> object:
        try:
            value = super().decode(s, *args)
        except RecursionError:
            raise TooDeep(s) from None
        # Nesting past MAX_DEPTH needs more brackets than that (counted in C, strings
        # included): the rate page's answers, a few levels deep, are not walked.
        if s.count("[") + s.count("{") > MAX_DEPTH:
            try:
                depth_check(value)
            except TooDeep:
                raise TooDeep(s) from None
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
