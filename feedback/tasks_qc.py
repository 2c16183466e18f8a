"""Tasks of qc (on the ``default`` queue)."""

__all__: list[str] = []
