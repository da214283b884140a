"""Runner of the concern approach (being built: see its issue)."""

from __future__ import annotations

from typing import Any


def run(workdir: str) -> dict[str, Any]:
    raise ValueError("--approach=concern is not built yet")
