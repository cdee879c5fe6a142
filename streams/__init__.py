"""order-streams: the Faust app (``faust -A streams worker``).

``streams.app`` is built on first access from the environment's settings, so that
importing a submodule (events, settings, the engine …) never needs a broker or
valid settings.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "app":
        import importlib

        from streams.settings import load_settings

        built = importlib.import_module("streams.assembly").create_app(load_settings())
        globals()["app"] = built
        return built
    raise AttributeError(f"module 'streams' has no attribute {name!r}")
