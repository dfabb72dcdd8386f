"""Price and carbon forecasts for the hosted controller.

From ``forecast_csv`` when configured (columns ``slot_start`` (UTC), ``price_gbp_per_kwh``,
``carbon_g_per_kwh``), else the twin's built-in Agile-like price and GB-carbon-like shapes for
the next 48 hours. The real feeds (Carbon Intensity, Octopus Agile, ENTSO-E) plug in here.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from twin.scenario import SignalsModel
from twin.signals import build_signals

__all__ = ["forecast_frame", "HORIZON"]

HORIZON = timedelta(hours=48)


def forecast_frame(settings, now: datetime) -> pd.DataFrame:
    """The forecast from the current slot to ``HORIZON`` ahead, indexed by UTC slot start."""
    if settings.forecast_csv:
        path = Path(settings.forecast_csv)
        frame = pd.read_csv(path)
        missing = {"slot_start", "price_gbp_per_kwh", "carbon_g_per_kwh"} - set(frame.columns)
        if missing:
            raise ValueError(f"{path}: forecast CSV without column(s) {', '.join(sorted(missing))}")
        frame.index = pd.DatetimeIndex(pd.to_datetime(frame.pop("slot_start"), utc=True), name="slot_start")
        return frame[["price_gbp_per_kwh", "carbon_g_per_kwh"]].sort_index()
    model = SignalsModel(slot_minutes=settings.slot_minutes)
    signals = build_signals(model, now, now + HORIZON, np.random.default_rng(0))
    return signals.frame[["price_forecast_gbp_per_kwh", "carbon_forecast_g_per_kwh"]].rename(
        columns={"price_forecast_gbp_per_kwh": "price_gbp_per_kwh", "carbon_forecast_g_per_kwh": "carbon_g_per_kwh"})
