"""The annotation tests' fixtures (a corpus, a researcher), for the feedback tests."""

from tests.annotation.conftest import corpus, researcher  # noqa: F401
