"""Technical-analysis problems: indicators computed with the `ta` library on synthetic daily price series.

Each question shows the series as a table, states the indicator's exact convention (the one `ta` uses)
and asks for its value on the last day, rounded to two decimals (OBV, a whole number, exactly).
The series is kept in the metadata, so the answer can be recomputed.
"""
from __future__ import annotations

import random
from types import ModuleType
from typing import TYPE_CHECKING, Callable

import numpy as np

from jaxmath.data.generators.base import Problem, decimal_text, register

if TYPE_CHECKING:  # pandas and ta load when a technical-analysis problem is drawn, not with the package
    import pandas as pd

ROUNDING = {0: "", 2: " Round to two decimal places."}


def price_series(rng: random.Random, days: int) -> pd.DataFrame:
    """A random-walk daily OHLCV series (prices in cents, whole-hundred volumes)."""
    import pandas as pd

    noise = np.random.default_rng(rng.getrandbits(64))
    close = rng.uniform(20, 200) * np.exp(np.cumsum(noise.normal(0.0, 0.02, days)))
    open_ = close * np.exp(noise.normal(0.0, 0.01, days))
    high = np.maximum(open_, close) * (1 + noise.uniform(0.0, 0.02, days))
    low = np.minimum(open_, close) * (1 - noise.uniform(0.0, 0.02, days))
    volume = noise.integers(10, 500, days) * 100
    frame = pd.DataFrame({"open": open_, "high": high, "low": low, "close": close}).round(2)
    frame["volume"] = volume.astype(float)
    return frame


def _table(frame: pd.DataFrame, columns: tuple[str, ...]) -> str:
    header = "Day | " + " | ".join(c.capitalize() for c in columns)
    rows = [f"{day} | " + " | ".join(f"{frame[c].iloc[day - 1]:.0f}" if c == "volume" else f"{frame[c].iloc[day - 1]:.2f}"
                                    for c in columns) for day in range(1, len(frame) + 1)]
    return "\n".join([header, *rows])


def _indicator(name: str, days: tuple[int, int], windows: tuple[int, ...], columns: tuple[str, ...],
               definition: str, compute: Callable[[ModuleType, pd.DataFrame, int], pd.Series],
               places: int = 2) -> None:
    """Register generator `ta__<name>`: draw a series, compute the indicator with `ta` (the module is
    `compute`'s first argument), ask for its last value."""
    @register(f"ta__{name}", "technical_analysis")
    def draw(rng: random.Random) -> Problem:
        import ta

        window = rng.choice(windows)
        frame = price_series(rng, rng.randint(*days) + window)
        value = float(compute(ta, frame, window).iloc[-1])
        answer = decimal_text(value, places)
        question = (f"Daily prices of a stock:\n{_table(frame, columns)}\n\n{definition.format(n=window)} "
                    f"What is its value on day {len(frame)}?{ROUNDING[places]}")
        return Problem(question, answer, answer,
                       params={"indicator": name, **({"window": window} if window else {}),
                               **{c: frame[c].tolist() for c in columns}})


_indicator("sma", (0, 6), (3, 5, 10), ("close",),
           "The {n}-day simple moving average (SMA) is the mean of the last {n} closing prices.",
           lambda ta, f, n: ta.trend.SMAIndicator(f["close"], window=n).sma_indicator())
_indicator("ema", (0, 10), (5, 10), ("close",),
           "The {n}-day exponential moving average (EMA) uses alpha = 2/({n}+1): it starts at the first close "
           "and each day EMA = alpha * close + (1 - alpha) * previous EMA.",
           lambda ta, f, n: ta.trend.EMAIndicator(f["close"], window=n).ema_indicator())
_indicator("rsi", (2, 10), (7, 14), ("close",),
           "The {n}-day relative strength index (RSI): the daily change is close minus previous close; average gain "
           "and average loss start at 0 on day 1 and each later day become (previous * ({n} - 1) + today's gain "
           "(or loss, as a positive number)) / {n}; RSI = 100 - 100 / (1 + average gain / average loss).",
           lambda ta, f, n: ta.momentum.RSIIndicator(f["close"], window=n).rsi())
_indicator("macd", (26, 32), (0,), ("close",),
           "MACD is the 12-day EMA minus the 26-day EMA of the close, where a k-day EMA uses alpha = 2/(k+1), "
           "starts at the first close and each day is alpha * close + (1 - alpha) * previous EMA.",
           lambda ta, f, n: ta.trend.MACD(f["close"], window_slow=26, window_fast=12).macd())
_indicator("bollinger_upper", (0, 6), (10, 20), ("close",),
           "The upper Bollinger Band is the {n}-day mean of the close plus 2 times the population standard "
           "deviation (divide by {n}) of the same {n} closes.",
           lambda ta, f, n: ta.volatility.BollingerBands(f["close"], window=n, window_dev=2).bollinger_hband())
_indicator("bollinger_lower", (0, 6), (10, 20), ("close",),
           "The lower Bollinger Band is the {n}-day mean of the close minus 2 times the population standard "
           "deviation (divide by {n}) of the same {n} closes.",
           lambda ta, f, n: ta.volatility.BollingerBands(f["close"], window=n, window_dev=2).bollinger_lband())
_indicator("atr", (1, 8), (5, 7, 14), ("high", "low", "close"),
           "The true range (TR) of a day is the largest of high - low, |high - previous close| and |low - previous "
           "close| (on day 1 just high - low). The {n}-day average true range (ATR) on day {n} is the mean of the "
           "first {n} TRs; after that ATR = (previous ATR * ({n} - 1) + TR) / {n}.",
           lambda ta, f, n: ta.volatility.AverageTrueRange(f["high"], f["low"], f["close"],
                                                           window=n).average_true_range())
_indicator("obv", (4, 12), (0,), ("close", "volume"),
           "On-balance volume (OBV) is a running total of volume: day 1 adds its volume, and each later day adds its "
           "volume when the close is not below the previous close and subtracts it when the close is lower.",
           lambda ta, f, n: ta.volume.OnBalanceVolumeIndicator(f["close"], f["volume"]).on_balance_volume(), places=0)
_indicator("mfi", (1, 6), (5, 7, 14), ("high", "low", "close", "volume"),
           "The typical price is (high + low + close) / 3 and the money flow is typical price times volume. Over the "
           "last {n} days, the money flow counts as positive on days whose typical price is above the previous "
           "day's and negative when it is below (neither when equal). The {n}-day money flow index (MFI) is "
           "100 * positive flow / (positive flow + negative flow).",
           lambda ta, f, n: ta.volume.MFIIndicator(f["high"], f["low"], f["close"], f["volume"], window=n)
           .money_flow_index())
_indicator("vwap", (0, 6), (5, 10, 14), ("high", "low", "close", "volume"),
           "The {n}-day volume-weighted average price (VWAP) is the sum over the last {n} days of typical price "
           "(high + low + close) / 3 times volume, divided by the total volume of those days.",
           lambda ta, f, n: ta.volume.VolumeWeightedAveragePrice(f["high"], f["low"], f["close"], f["volume"], window=n)
           .volume_weighted_average_price())
