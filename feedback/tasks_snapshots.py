"""Tasks of snapshots (on the ``default`` queue)."""

__all__: list[str] = []
