"""An HTTP hub (``minies serve``): to be built."""

from __future__ import annotations

from typing import Any


def add_commands(commands: Any) -> None:
    """Register ``serve`` and ``device`` (none yet)."""
