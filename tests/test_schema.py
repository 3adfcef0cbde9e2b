"""Tests of engine.schema.canonical_signals: whatever the index, the result is the one the full rebuild gives
(levels, codes, zone object), and an index that is already canonical is not rebuilt."""
from __future__ import annotations

import datetime
import zoneinfo

import numpy as np
import pandas as pd
import pytest

from engine.schema import canonical_signals, is_canonical_index

SESSIONS = pd.DatetimeIndex(["2020-01-06 14:30", "2020-01-07 14:30"], tz="UTC").as_unit("ns")


def rebuilt(frame: pd.DataFrame) -> pd.DataFrame:
    """The rebuild canonical_signals always did before it learned to skip it: the reference."""
    tickers = frame.index.get_level_values("ticker").astype(str)
    sessions = pd.DatetimeIndex(frame.index.get_level_values("session")).tz_convert("UTC").as_unit("ns")
    out = frame.copy()
    out.index = pd.MultiIndex.from_arrays([tickers, sessions], names=["ticker", "session"])
    return out


def assert_same(result: pd.DataFrame, expected: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(result, expected, check_exact=True)
    for got, want in zip(result.index.levels, expected.index.levels):
        assert got.equals(want) and got.dtype == want.dtype
    for got, want in zip(result.index.codes, expected.index.codes):
        assert np.array_equal(got, want) and got.dtype == want.dtype


def frame_on(tickers, sessions, values) -> pd.DataFrame:
    return pd.DataFrame({"sentiment": values},
                        index=pd.MultiIndex.from_arrays([tickers, sessions], names=["ticker", "session"]))


def test_a_canonical_index_is_kept_as_the_rebuild_would_make_it(monkeypatch):
    frame = rebuilt(frame_on(pd.Index(["X", "X", "Y"], dtype=object), SESSIONS[[0, 1, 1]], [0.1, 0.2, 0.3]))
    expected = rebuilt(frame)
    assert is_canonical_index(frame.index)

    def no_rebuild(*args, **kwargs):
        raise AssertionError("rebuilt a canonical index")

    monkeypatch.setattr(pd.MultiIndex, "from_arrays", no_rebuild)
    result = canonical_signals(frame)
    assert_same(result, expected)
    result.iloc[0, 0] = 9.0  # a copy (shallow, which pandas copies on write): the input keeps its values
    assert frame["sentiment"].tolist() == [0.1, 0.2, 0.3]
    result.iloc[0, 0] = 9.0  # the result is a copy: the input keeps its values
    assert frame["sentiment"].tolist() == [0.1, 0.2, 0.3]


@pytest.mark.parametrize("case", ["unused level", "object tickers", "zoneinfo UTC", "microseconds", "New York",
                                  "unsorted level", "missing session", "extra level"])
def test_any_other_index_comes_back_as_the_rebuild_makes_it(case):
    canonical = rebuilt(frame_on(pd.Index(["X", "Y"], dtype=object), SESSIONS, [0.1, 0.2]))
    if case == "unused level":  # a boolean filter keeps "X" among the levels
        frame = canonical[[False, True]]
    elif case == "object tickers":
        frame = frame_on(pd.Index(["X", "Y"], dtype=object), SESSIONS, [0.1, 0.2])
    elif case == "zoneinfo UTC":
        frame = frame_on(pd.Index(["X", "Y"], dtype="str"), SESSIONS.tz_convert(zoneinfo.ZoneInfo("UTC")), [0.1, 0.2])
    elif case == "microseconds":
        frame = frame_on(pd.Index(["X", "Y"], dtype="str"), SESSIONS.as_unit("us"), [0.1, 0.2])
    elif case == "New York":
        frame = frame_on(pd.Index(["X", "Y"], dtype="str"), SESSIONS.tz_convert("America/New_York"), [0.1, 0.2])
    elif case == "unsorted level":
        index = pd.MultiIndex(levels=[pd.Index(["Y", "X"], dtype="str"), SESSIONS], codes=[[1, 0], [0, 1]],
                              names=["ticker", "session"])
        frame = pd.DataFrame({"sentiment": [0.1, 0.2]}, index=index)
    elif case == "missing session":
        frame = frame_on(pd.Index(["X", "Y"], dtype="str"), pd.DatetimeIndex([SESSIONS[0], pd.NaT]), [0.1, 0.2])
    else:
        frame = canonical.set_index(pd.Index(["a", "b"], name="source"), append=True)
    assert not is_canonical_index(frame.index)
    result = canonical_signals(frame)
    assert_same(result, rebuilt(frame))
    result.iloc[0, 0] = 9.0
    assert frame["sentiment"].iloc[0] != 9.0
    if case == "unused level":
        assert list(result.index.levels[0]) == ["Y"]  # worked out by hand: only Y is left
    assert result.index.levels[1].tz is datetime.timezone.utc  # the zone object tz_convert("UTC") sets
