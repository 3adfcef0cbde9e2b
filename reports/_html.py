"""Small HTML helpers shared by the tear sheet and the sweep page: number formats, escaped tables, atomic
writes. Private to ``reports``."""
from __future__ import annotations

import html
import math
import os
import uuid
from pathlib import Path
from typing import Any, Callable

import pandas as pd



def _percent(value: Any) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.2%}"


def _number(digits: int) -> Callable[[Any], str]:
    def format_number(value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "–"
        if isinstance(value, float) and math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.{digits}f}"

    return format_number


def _integer(value: Any) -> str:
    return "–" if value is None or (isinstance(value, float) and not math.isfinite(value)) else str(int(value))


def _date(value: Any) -> str:
    return pd.Timestamp(value).strftime("%Y-%m-%d") if value is not None and not pd.isna(value) else "–"


def _plain_text(value: Any) -> str:
    return "–" if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value)


def _table(frame: pd.DataFrame, formats: dict[str, Callable[[Any], str]] | None = None, index: bool = True) -> str:
    """An HTML table of ``frame``; every header, index label and cell is escaped."""
    formats = formats or {}
    head = ([html.escape(str(frame.index.name or ""))] if index else []) + [html.escape(str(c)) for c in frame.columns]
    lines = ["<table>", "<thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead>", "<tbody>"]
    # Column by column, so an integer column stays integer (a row would upcast it to float).
    texts = [
        [formats[column](v) if column in formats else _plain_text(v) for v in frame[column].tolist()]
        for column in frame.columns
    ]
    for position, label in enumerate(frame.index):
        cells = ([str(label)] if index else []) + [column[position] for column in texts]
        lines.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    lines.append("</tbody></table>")
    return "\n".join(lines)


def _write_text_atomic(text: str, path: Path) -> None:
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
