"""structlog set-up shared by Keyward's processes: JSON lines on stderr, one event per line."""

from __future__ import annotations

import logging

import structlog


def configure(level: str = "info") -> None:
    logging.basicConfig(format="%(message)s", level=level.upper())
    # One INFO line per audit batch POST is noise; failures are logged by the shipper itself.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        cache_logger_on_first_use=True,
    )
