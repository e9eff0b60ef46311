"""Redis stream entry ids as the scheduler keeps them (str)."""

from __future__ import annotations


def entry_id_str(entry_id: bytes | str) -> str:
    """A stream entry id as str (redis-py returns bytes)."""
    return entry_id.decode() if isinstance(entry_id, bytes) else entry_id
