"""Energy and CO2e of a run, as Pan and Rajan (ICSE 2022, Eq. 1 and 2) estimate them."""

from __future__ import annotations

import math
import numbers

PUE = 1.58  # power usage effectiveness in Eq. 1 (Strubell et al.)
CO2E_PER_KWH = 0.954  # pounds of CO2e per kWh in Eq. 2


def co2e(seconds: float, cpu_watts: float, dram_watts: float, gpu_watts: float = 0.0,
         gpus: int = 0) -> dict[str, float]:
    """Energy ``pt = 1.58 t (pc + pr + g pg) / 1000`` (kWh, t in hours) and ``CO2e = 0.954 pt`` (lbs)."""
    values = {"seconds": seconds, "cpu_watts": cpu_watts, "dram_watts": dram_watts, "gpu_watts": gpu_watts}
    bad = [k for k, v in values.items() if not (isinstance(v, numbers.Real) and math.isfinite(v) and v >= 0)]
    if bad or gpus < 0:
        raise ValueError(f"co2e needs finite non-negative inputs, got {values} and gpus={gpus}")
    kwh = PUE * (seconds / 3600.0) * (cpu_watts + dram_watts + gpus * gpu_watts) / 1000.0
    return {"kwh": kwh, "co2e_lbs": CO2E_PER_KWH * kwh}
