"""Price and carbon signals for the twin: built-in daily shapes, CSV input, forecasts.

Built-in shapes (half-hourly, UTC; the default scenario runs in January, when UK clock time is
UTC):

``agile_like``
    Follows the structure of Octopus Energy's Agile tariff formula: unit rate (p/kWh) =
    2.2 × day-ahead wholesale price (p/kWh) + 12 p in the 16:00–19:00 peak, capped at 100 p, plus
    5 % VAT (Agile's published pricing formula; `docs.octopus.energy`, and the unit-rate API in
    ``shared/reference/apis.md`` §4.2). The wholesale input is a synthetic GB winter weekday
    shape: lowest around 04:00, a morning ramp, highest around 17:30. The result has the Agile
    look — roughly 13–16 p overnight, 40 p+ at the evening peak — but it is not recorded data.
``gb_carbon_like``
    A synthetic GB winter weekday carbon-intensity shape in gCO2/kWh: about 120 overnight, rising
    through the day to about 230 at the evening peak, as the National Grid ESO Carbon Intensity
    API (``api.carbonintensity.org.uk``, §4.1) typically shows in winter. Not recorded data.
``flat``
    Constant 0.245 GBP/kWh (a typical UK price-cap unit rate) or 180 gCO2/kWh.

Each day's level is scaled by a lognormal factor (``day_to_day_sd``); price and carbon share
most of that draw (windy days are cheap and clean). Forecasts are the actual series times
``1 + e``, with ``e`` drawn per slot (``forecast_error``).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from twin.domain import Signals
from twin.scenario import ScenarioError, SignalShape, SignalsModel

__all__ = ["build_signals", "agile_price_p_per_kwh", "WHOLESALE_GBP_PER_MWH", "CARBON_G_PER_KWH"]

# Synthetic GB winter weekday day-ahead wholesale price, GBP/MWh, one value per half hour from
# 00:00 UTC.
WHOLESALE_GBP_PER_MWH = np.array(
    [
        72, 70, 68, 66, 64, 62, 60, 59, 58, 58, 59, 62,  # 00:00-05:30
        68, 76, 86, 95, 98, 97, 94, 90, 87, 85, 84, 84,  # 06:00-11:30
        83, 82, 82, 84, 88, 95, 105, 118, 128, 132, 130, 124,  # 12:00-17:30
        116, 108, 101, 96, 92, 89, 86, 83, 80, 78, 76, 74,  # 18:00-23:30
    ],
    dtype=float,
)
# Synthetic GB winter weekday carbon intensity, gCO2/kWh, per half hour from 00:00 UTC.
CARBON_G_PER_KWH = np.array(
    [
        130, 126, 122, 119, 117, 116, 116, 117, 119, 123, 129, 137,
        148, 160, 172, 181, 186, 187, 186, 183, 180, 177, 175, 174,
        174, 175, 178, 183, 190, 199, 210, 221, 229, 232, 229, 222,
        212, 202, 192, 183, 175, 167, 160, 153, 147, 142, 138, 134,
    ],
    dtype=float,
)

# Agile's formula constants (p/kWh): wholesale multiplier, 16:00-19:00 peak adder, cap, VAT.
_AGILE_MULTIPLIER = 2.2
_AGILE_PEAK_ADDER_P = 12.0
_AGILE_CAP_P = 100.0
_VAT = 1.05
_FLAT_PRICE_GBP = 0.245
_FLAT_CARBON_G = 180.0
# Share of the daily carbon factor that comes from the same draw as the price factor.
_DAY_CORRELATION = 0.7


def agile_price_p_per_kwh(wholesale_gbp_per_mwh: np.ndarray, half_hour_of_day: np.ndarray) -> np.ndarray:
    """Agile-formula unit rate (p/kWh inc. VAT) from a wholesale price (GBP/MWh)."""
    wholesale_p = wholesale_gbp_per_mwh / 10.0
    peak = (half_hour_of_day >= 32) & (half_hour_of_day < 38)
    rate = _AGILE_MULTIPLIER * wholesale_p + np.where(peak, _AGILE_PEAK_ADDER_P, 0.0)
    return np.minimum(rate, _AGILE_CAP_P) * _VAT


def build_signals(model: SignalsModel, start: datetime | pd.Timestamp, end: datetime | pd.Timestamp, rng: np.random.Generator,
                  base_dir: Path = Path(".")) -> Signals:
    """Build actual and forecast price/carbon series covering ``[start, end)``.

    ``start`` is floored to the slot grid; ``end`` is rounded up.
    """
    slot = timedelta(minutes=model.slot_minutes)
    first = pd.Timestamp(start).floor(slot)
    count = int(np.ceil((pd.Timestamp(end) - first) / slot))
    index = pd.date_range(first, periods=count, freq=slot, tz="UTC", name="slot_start")
    days = (index.normalize() - first.normalize()).days.to_numpy()
    day_z = rng.standard_normal((2, int(days.max()) + 1))
    price_factor = np.exp(model.day_to_day_sd * day_z[0])[days]
    carbon_z = _DAY_CORRELATION * day_z[0] + np.sqrt(1 - _DAY_CORRELATION**2) * day_z[1]
    carbon_factor = np.exp(model.day_to_day_sd * carbon_z)[days]
    half_hour = (index.hour * 2 + index.minute // 30).to_numpy()

    price = _series(model.price, "price", index, base_dir, half_hour, price_factor)
    carbon = _series(model.carbon, "carbon", index, base_dir, half_hour, carbon_factor)
    err = rng.standard_normal((2, count))
    frame = pd.DataFrame(
        {
            "price_gbp_per_kwh": price,
            "carbon_g_per_kwh": carbon,
            "price_forecast_gbp_per_kwh": price * (1 + model.forecast_error.price_relative_sd * err[0]),
            "carbon_forecast_g_per_kwh": carbon * (1 + model.forecast_error.carbon_relative_sd * err[1]),
        },
        index=index,
    )
    source = f"price: {model.price.shape or model.price.csv}; carbon: {model.carbon.shape or model.carbon.csv}"
    return Signals(frame, model.slot_minutes, source=source)


def _series(spec: SignalShape, what: str, index: pd.DatetimeIndex, base_dir: Path,
            half_hour: np.ndarray, day_factor: np.ndarray) -> np.ndarray:
    if spec.csv is not None:
        return _from_csv(spec, what, index, base_dir) * spec.scale
    if spec.shape == "flat":
        base = np.full(len(index), _FLAT_PRICE_GBP if what == "price" else _FLAT_CARBON_G)
        return base * spec.scale
    if spec.shape == "agile_like":
        if what != "price":
            raise ScenarioError("signals", ["carbon.shape 'agile_like' is a price shape"])
        wholesale = WHOLESALE_GBP_PER_MWH[half_hour] * day_factor
        return agile_price_p_per_kwh(wholesale, half_hour) / 100.0 * spec.scale
    if spec.shape == "gb_carbon_like":
        if what != "carbon":
            raise ScenarioError("signals", ["price.shape 'gb_carbon_like' is a carbon shape"])
        return CARBON_G_PER_KWH[half_hour] * day_factor * spec.scale
    raise ScenarioError("signals", [f"{what}: unknown shape {spec.shape!r}"])


def _from_csv(spec: SignalShape, what: str, index: pd.DatetimeIndex, base_dir: Path) -> np.ndarray:
    path = (base_dir / spec.csv).resolve()
    column = spec.column or ("price_gbp_per_kwh" if what == "price" else "carbon_g_per_kwh")
    try:
        raw = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ScenarioError(str(path), [f"cannot read {what} CSV: {exc}"]) from None
    for col in ("slot_start", column):
        if col not in raw.columns:
            raise ScenarioError(str(path), [f"missing column '{col}' (has: {', '.join(raw.columns)})"])
    try:
        times = pd.to_datetime(raw["slot_start"], utc=False)
    except (ValueError, TypeError) as exc:
        raise ScenarioError(str(path), [f"slot_start: not a time: {exc}"]) from None
    if times.dt.tz is None:
        raise ScenarioError(str(path), ["slot_start times need a timezone (e.g. '2026-01-12T00:00:00Z')"])
    values = pd.to_numeric(raw[column], errors="coerce")
    bad = values.isna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0]) + 2
        raise ScenarioError(str(path), [f"line {row}: {column}: not a number ({raw[column].iloc[row - 2]!r})"])
    series = pd.Series(values.to_numpy(), index=times.dt.tz_convert("UTC")).sort_index()
    if series.index.has_duplicates:
        raise ScenarioError(str(path), ["slot_start has duplicate times"])
    # Step the series onto our slot grid (a value holds until the next one).
    aligned = series.reindex(series.index.union(index)).ffill().reindex(index)
    step = series.index.to_series().diff().median() if len(series) > 1 else pd.Timedelta(0)
    if series.index[0] > index[0] or series.index[-1] + step < index[-1] + (index[1] - index[0]):
        raise ScenarioError(
            str(path),
            [f"{what} CSV covers {series.index[0]} .. {series.index[-1]}, "
             f"but the scenario needs {index[0]} .. {index[-1]}"],
        )
    return aligned.to_numpy(dtype=float)
