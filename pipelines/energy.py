"""Energy and carbon of a run, measured with codecarbon's offline tracker.

codecarbon reads GPU power through NVML, CPU power through RAPL where the kernel exposes it
(otherwise it estimates from the CPU's TDP and load), and models RAM power from its size; the
energy is scaled by the PUE and turned into CO2e with the country's grid intensity (or a
forced one). Every assumption goes into the output next to the figures.
"""

from __future__ import annotations

import logging
from typing import Any

from geopile.settings import Energy

log = logging.getLogger(__name__)


class EnergyMeter:
    """Start, stop, and a dict of kWh, kg CO2e and the assumptions behind them."""

    def __init__(self, settings: Energy) -> None:
        self.settings = settings
        self.tracker = None

    def start(self) -> None:
        """Begin measuring (a no-op when disabled or codecarbon is missing)."""
        if not self.settings.enabled:
            return
        try:
            from codecarbon import OfflineEmissionsTracker
        except ImportError:  # pragma: no cover - codecarbon is a dependency
            log.warning("codecarbon is not installed: no energy figures for this run")
            return
        logging.getLogger("codecarbon").setLevel(logging.ERROR)  # its init chatter
        s = self.settings
        extra = ({"force_carbon_intensity_g_co2e_kwh": s.carbon_intensity}
                 if s.carbon_intensity is not None else {})
        self.tracker = OfflineEmissionsTracker(
            country_iso_code=s.country, pue=s.pue, measure_power_secs=s.interval_s,
            output_methods=[], log_level="error", tracking_mode="machine",
            allow_multiple_runs=True, project_name="geopile-pretrain", **extra)
        self.tracker.start()

    def snapshot(self) -> dict[str, Any] | None:
        """The figures so far, the tracker still running (for checkpoints)."""
        if self.tracker is None:
            return None
        try:
            # codecarbon's own flush() computes exactly this but returns only the kg
            self.tracker._measure_power_and_energy_if_stale()
            return _figures(self.tracker._prepare_emissions_data())
        except Exception as err:  # a private API: never fail a run over it
            log.warning("energy snapshot failed: %s", err)
            return None

    def stop(self) -> dict[str, Any] | None:
        """Stop measuring; the run's figures, or None when nothing was measured."""
        if self.tracker is None:
            return None
        self.tracker.stop()
        data = self.tracker.final_emissions_data
        self.tracker = None
        return _figures(data)


def _figures(data: Any) -> dict[str, Any]:
    kwh, kg = float(data.energy_consumed), float(data.emissions)
    return {
        "kwh": kwh,
        "kg_co2e": kg,
        "duration_s": float(data.duration),
        "cpu_kwh": float(data.cpu_energy),
        "gpu_kwh": float(data.gpu_energy),
        "ram_kwh": float(data.ram_energy),
        "assumptions": {
            "tool": f"codecarbon {data.codecarbon_version} (offline tracker, machine mode)",
            "scope": "the machine of rank 0 (other nodes of a multi-node run are not measured)",
            "country": data.country_iso_code,
            "grid_g_co2e_per_kwh": round(kg / kwh * 1000, 1) if kwh else None,
            "pue": float(data.pue),
            "cpu": f"{data.cpu_model} x{data.cpu_count}: RAPL if readable, else TDP x load",
            "gpu": f"{data.gpu_model or 'none'} x{data.gpu_count}: NVML power",
            "ram": f"{data.ram_total_size:.0f} GB: codecarbon's per-GB model",
        },
    }


def add_energy(total: dict[str, Any] | None, part: dict[str, Any] | None) -> dict[str, Any] | None:
    """Energy of a resumed run: the parts before and after the restart, summed."""
    if total is None or part is None:
        return part or total
    out = dict(part)
    for key in ("kwh", "kg_co2e", "duration_s", "cpu_kwh", "gpu_kwh", "ram_kwh"):
        out[key] = total[key] + part[key]
    return out


def energy_line(energy: dict[str, Any] | None) -> str:
    """One line for the console."""
    if not energy or "kwh" not in energy:
        return "energy: not measured"
    a = energy["assumptions"]
    return (f"energy: {energy['kwh'] * 1000:.3f} Wh, {energy['kg_co2e'] * 1000:.3f} g CO2e "
            f"({a['country']} grid {a['grid_g_co2e_per_kwh']} g/kWh, PUE {a['pue']}; "
            f"{a['tool']})")
