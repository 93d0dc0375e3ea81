"""search: the study engine, and the Python API (`search.compress`, `search.Study`; see `search.api`)."""

from __future__ import annotations

from typing import Any

API = ("compress", "Study", "StudyResult", "RunOptions")


def __getattr__(name: str) -> Any:
    """The API, imported on first use, so `python -m search.export --verify` does not pay for it."""
    if name in API:
        from search import api

        return getattr(api, name)
    raise AttributeError(f"module 'search' has no attribute {name!r}")
