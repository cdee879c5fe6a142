"""The failure modes live in :mod:`streams.engine.errors`; this name stays for imports."""

from streams.engine.errors import *  # noqa: F401,F403
from streams.engine.errors import classify  # noqa: F401
