"""Tests of engine._csv.write_csv: the bytes of pandas' ``to_csv(path, index=False)``, written faster."""
from __future__ import annotations

import numpy as np
import pandas as pd

from engine._csv import _fields, write_csv


def test_write_csv_writes_what_was_worked_out_by_hand(tmp_path):
    frame = pd.DataFrame({
        "ticker": pd.array(["A", "b,c", None, 'q"d'], dtype="str"),
        "session": pd.DatetimeIndex(["2020-01-02 14:30", "2020-01-03 14:30", None, "2020-01-03 14:30"], tz="UTC"),
        "prediction": [0.1, -0.0, np.nan, 1e-05],
        "count": [1, 2, 3, -4],
    })
    write_csv(frame, tmp_path / "out.csv")
    assert (tmp_path / "out.csv").read_text() == (
        "ticker,session,prediction,count\n"
        "A,2020-01-02 14:30:00+00:00,0.1,1\n"
        '"b,c",2020-01-03 14:30:00+00:00,-0.0,2\n'
        ",,,3\n"
        '"q""d",2020-01-03 14:30:00+00:00,1e-05,-4\n'
    )


def test_write_csv_gives_pandas_bytes_for_every_kind_of_column(tmp_path):
    rng = np.random.default_rng(7)
    rows = 5_000
    bits = rng.integers(-(2**63), 2**63 - 1, size=rows, dtype=np.int64)  # any float64, subnormals and NaN included
    floats = np.concatenate([bits.view(np.float64), [0.0, -0.0, np.inf, -np.inf, 1e16, 1e15, 1e-4, 1e-5, 5e-324]])
    n = len(floats)
    frame = pd.DataFrame({
        "float": floats,
        "float32": rng.normal(size=n).astype(np.float32),
        "int": rng.integers(-5, 5, size=n),
        "bool": rng.integers(0, 2, size=n).astype(bool),
        "text": pd.array(rng.choice(["a", "b,c", 'q"d', "", "x\ny", "é", " s ", "c\rr", "t\tab", "sem;i", "'", "\\"],
                                    size=n), dtype="str"),
        "instant": pd.to_datetime(rng.integers(0, 2**62, size=n) // 1000, utc=True).as_unit("ns"),
        "object": pd.Series(rng.choice(["u", "v,w"], size=n), dtype=object),
    })
    frame.loc[::7, "text"] = np.nan
    frame.loc[::11, "instant"] = pd.NaT
    variants = {
        "mixed": frame,
        "dates only": frame.assign(instant=pd.to_datetime(rng.integers(0, 20_000, size=n), unit="D")),
        "dates only, some missing, in microseconds": frame.assign(
            instant=pd.to_datetime(rng.integers(-20_000, 20_000, size=n), unit="D").as_unit("us").where(
                np.arange(n) % 13 != 0)),
        "no dates": frame.assign(instant=pd.Series(pd.NaT, index=frame.index, dtype="datetime64[s]")),
        "dates and one instant after midnight": frame.assign(
            instant=pd.to_datetime(rng.integers(0, 20_000, size=n), unit="D") + pd.to_timedelta(
                (np.arange(n) == 17) * 1000, unit="ns")),
        "milliseconds": frame.assign(instant=pd.to_datetime(rng.integers(0, 2**40, size=n), unit="ms")),
        "New York": frame.assign(instant=pd.Timestamp("2020-01-02 09:30", tz="America/New_York")),
        "empty": frame.iloc[:0],
    }
    for name, variant in variants.items():
        assert _fields(variant) is not None, name  # written by write_csv itself, not handed to pandas
        variant.to_csv(tmp_path / "pandas.csv", index=False)
        write_csv(variant, tmp_path / "fast.csv")
        assert (tmp_path / "fast.csv").read_bytes() == (tmp_path / "pandas.csv").read_bytes(), name


def test_write_csv_hands_other_frames_to_pandas(tmp_path):
    # one column (csv quotes an empty row), objects that are not strings, a name that infers compression
    for frame, name in [(pd.DataFrame({"a": ["x", ""]}), "one.csv"),
                        (pd.DataFrame({"a": [1, "x"], "b": [1.0, 2.0]}, dtype=object), "objects.csv"),
                        (pd.DataFrame({"a": ["x"], "b": [1.0]}), "packed.csv.gz")]:
        frame.to_csv(tmp_path / f"pandas-{name}", index=False)
        write_csv(frame, tmp_path / name)
        if not name.endswith(".gz"):  # gzip stamps the time: compare what it holds
            assert (tmp_path / name).read_bytes() == (tmp_path / f"pandas-{name}").read_bytes()
        else:
            assert pd.read_csv(tmp_path / name).equals(pd.read_csv(tmp_path / f"pandas-{name}"))
    assert _fields(pd.DataFrame({"a": ["x", ""]})) is None
