"""Personalized Showcases: the library (no Ray in here; importable and testable without a cluster)."""

__version__ = "0.1.0"


def read_showcases(root: str, date: str | None = None, columns: list[str] | None = None, version: int | None = None):
    """The published showcases of ``date`` (default: the newest) as an Arrow table; ``version``: Delta time travel."""
    from .showcase import read_showcases as _read

    return _read(root, date, columns, version)
