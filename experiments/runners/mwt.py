"""Runner of the mwt approach (being built: see its issue)."""

from __future__ import annotations

from typing import Any


def run(workdir: str) -> dict[str, Any]:
    raise ValueError("--approach=mwt is not built yet")
