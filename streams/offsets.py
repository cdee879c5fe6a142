"""End offsets from a Fetch's high watermark: see :func:`streams.faust_compat.fetch_high_watermarks`."""

from streams.faust_compat import fetch_high_watermarks

__all__ = ["fetch_high_watermarks"]
