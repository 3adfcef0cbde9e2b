"""Exchange session times: turning a trading date into the UTC instants of its open and close.

Daily bars carry only a date; newsbt stamps each bar with its session open in UTC (see ``engine.schema``),
computed in the exchange's own time zone so that daylight-saving changes are handled.
"""
from __future__ import annotations

import pandas as pd

from engine.errors import ConfigError


def _clock(value: str, key: str) -> pd.Timedelta:
    try:
        hours, minutes = str(value).split(":")
        return pd.Timedelta(hours=int(hours), minutes=int(minutes))
    except ValueError:
        raise ConfigError(f"{key}: expected a clock time like 09:30, got {value!r}") from None


def session_instants(dates: pd.Series | pd.DatetimeIndex, timezone: str, clock: str, key: str = "session_open") -> pd.DatetimeIndex:
    """UTC instants of ``clock`` (e.g. "09:30") on each exchange-local date in ``dates``.

    >>> session_instants(pd.to_datetime(["2016-07-01"]), "America/New_York", "09:30")  # 13:30 UTC
    """
    days = pd.DatetimeIndex(pd.to_datetime(dates)).normalize()
    if days.tz is not None:
        days = days.tz_localize(None)
    try:
        local = (days + _clock(clock, key)).tz_localize(timezone, nonexistent="shift_forward", ambiguous=False)
    except Exception as error:  # unknown zone names raise several types
        raise ConfigError(f"exchange timezone: cannot use {timezone!r} ({error})") from None
    return local.tz_convert("UTC")


def end_of_day(dates: pd.Series | pd.DatetimeIndex, timezone: str) -> pd.DatetimeIndex:
    """The last instant of each date in ``timezone``, in UTC: when a date-only news stamp counts as published.

    >>> end_of_day(pd.to_datetime(["2016-07-01"]), "UTC")  # 2016-07-01 23:59:59.999999 UTC
    """
    days = pd.DatetimeIndex(pd.to_datetime(dates)).normalize()
    if days.tz is not None:
        days = days.tz_localize(None)
    local = (days + pd.Timedelta(days=1) - pd.Timedelta(microseconds=1)).tz_localize(timezone, ambiguous=False, nonexistent="shift_forward")
    return local.tz_convert("UTC")
