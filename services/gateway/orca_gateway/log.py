"""Structured one-line logs: `event=NAME key=value ...`, with the request id where there is one."""

from __future__ import annotations

import logging

logger = logging.getLogger("orca_gateway")


def _format_value(value: object) -> str:
    text = str(value)
    if not text or any(c.isspace() or c in '"=' for c in text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


def format_event(event: str, **fields: object) -> str:
    """One log line: the event name, then the fields as key=value (None fields left out)."""
    parts = [f"event={event}"]
    parts.extend(f"{k}={_format_value(v)}" for k, v in fields.items() if v is not None)
    return " ".join(parts)


def log_event(event: str, level: int = logging.INFO, **fields: object) -> None:
    """Log one structured line on the gateway's logger."""
    if logger.isEnabledFor(level):
        logger.log(level, format_event(event, **fields))


def log_exception(event: str, **fields: object) -> None:
    """Log one structured line with the current exception's traceback."""
    logger.exception(format_event(event, **fields))
