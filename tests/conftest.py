"""Shared fixtures: small frames built by the tests themselves, and the location of the real data."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.calendar import session_instants

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (ROOT / ".." / "shared" / "data").resolve()


def make_prices(dates, opens, closes, ticker="X", timezone="America/New_York"):
    """A prices frame (schema of engine.schema) with highs and lows one unit outside open and close."""
    opens = np.asarray(opens, dtype=float)
    closes = np.asarray(closes, dtype=float)
    return pd.DataFrame(
        {
            "ticker": ticker,
            "timestamp": session_instants(pd.DatetimeIndex(dates), timezone, "09:30"),
            "open": opens,
            "high": np.maximum(opens, closes) + 1,
            "low": np.minimum(opens, closes) - 1,
            "close": closes,
            "volume": 1000.0,
        }
    )


def make_news(rows):
    """A news frame from (timestamp string with zone, ticker, text) tuples."""
    return pd.DataFrame(
        {
            "timestamp": pd.to_datetime([r[0] for r in rows], utc=True),
            "ticker": [r[1] for r in rows],
            "text": [r[2] for r in rows],
            "source": "test",
        }
    )


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA
