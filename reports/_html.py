"""Small HTML helpers shared by the tear sheet, the sweep page, the run index and the comparison page: number
formats, escaped tables and cells, links, the page skeleton with its inline sort and filter scripts, atomic
writes. Private to ``reports``."""
from __future__ import annotations

import html
import math
import os
import urllib.parse
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from engine.cache import write_text_atomic as _write_text_atomic  # noqa: F401 - the pages' writer
from engine.errors import DataError, OneLineParser  # noqa: F401 - OneLineParser: the pages' command lines


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


# ---------------------------------------------------------------- cells, links and whole pages


def read_csv_checked(path: Path, required: list[str], text: tuple[str, ...] = ()) -> pd.DataFrame:
    """``path`` read as a frame with the ``required`` columns, the ``text`` columns kept as written (a ticker
    "0700" stays "0700"); a DataError naming the file otherwise.

    >>> read_csv_checked(run_dir / "fills.csv", ["date", "ticker"], text=("ticker",))
    """
    try:
        frame = pd.read_csv(path, dtype={column: str for column in text})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read ({error})") from error
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    return frame


def _finite(*values: Any) -> bool:
    return all(v is not None and isinstance(v, (int, float, np.number)) and math.isfinite(v) for v in values)


def _cell(text: str, sort_value: str | None = None, css: str | None = None, attributes: dict[str, str] | None = None) -> str:
    """A <td> with escaped ``text``; ``sort_value`` becomes ``data-value`` (what the sort script compares)."""
    parts = [f' class="{css}"'] if css else []
    if sort_value is not None:
        parts.append(f' data-value="{html.escape(sort_value)}"')
    parts += [f' {name}="{html.escape(value)}"' for name, value in (attributes or {}).items()]
    return f"<td{''.join(parts)}>{html.escape(text)}</td>"


def _number_cell(value: Any, format_value: Callable[[Any], str], attributes: dict[str, str] | None = None) -> str:
    """A number as shown by ``format_value``, its full value in ``data-value`` (empty when missing)."""
    finite = _finite(value)
    return _cell(format_value(value if finite else None), repr(float(value)) if finite else "", attributes=attributes)


def _href(target: Path, page_folder: Path) -> str:
    """``target`` as a link from a page in ``page_folder``: relative when possible, else a file URI."""
    target = Path(target).resolve()
    try:
        relative = os.path.relpath(target, Path(page_folder).resolve())
    except ValueError:  # another drive (Windows): no relative path exists
        return target.as_uri()
    return urllib.parse.quote(Path(relative).as_posix())


def _link(href: str | None, text: str) -> str:
    return f'<a href="{html.escape(href)}">{html.escape(text)}</a>' if href else "–"


# An inline, empty icon: without one a browser serving the page over http asks the server for /favicon.ico.
NO_FAVICON = '<link rel="icon" href="data:,">'

PAGE_STYLE = """<style>
body{margin:30px;font:13px/1.4 Arial,sans-serif;color:#222}.container{max-width:1200px;margin:auto}
h1{font-size:24px}h2{font-size:18px;margin:30px 0 10px;border-bottom:1px solid #ddd}
img{max-width:100%}p.note{color:#555}table{border-spacing:0;margin:0 0 20px}
td,th{padding:3px 8px;text-align:right;border-bottom:1px solid #eee;vertical-align:top}
thead th{font-weight:700;background:#eee}td:first-of-type,th:first-of-type{text-align:left}
table.sortable thead th{cursor:pointer;white-space:nowrap}
table.sortable thead th[data-order=ascending]::after{content:" \\25B2"}
table.sortable thead th[data-order=descending]::after{content:" \\25BC"}
td.text{text-align:left}td.error{text-align:left;white-space:pre-wrap;max-width:420px;color:#a00}
tr.best td{background:#eef7ee}tr.failed td{background:#fbeeee}dl.summary dt{font-weight:700;float:left;
clear:left;width:230px}dl.summary dd{margin:0 0 4px 240px}input.filter{width:420px;padding:4px;margin:0 0 10px}
tr.same td{color:#888}td.nowrap{white-space:nowrap}code{white-space:pre-wrap}table#config th,table#trades th,table#fills th{text-align:left}
</style>"""

# Click a header to sort by it (again to reverse); numbers compare as numbers, missing cells stay last.
SORT_SCRIPT = """<script>
document.querySelectorAll("table.sortable").forEach(function (table) {
  var headers = table.querySelectorAll("thead th");
  headers.forEach(function (header, column) {
    header.addEventListener("click", function () {
      var ascending = header.getAttribute("data-order") !== "ascending";
      headers.forEach(function (other) { other.removeAttribute("data-order"); });
      header.setAttribute("data-order", ascending ? "ascending" : "descending");
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      function key(row) {
        var cell = row.cells[column];
        return cell.hasAttribute("data-value") ? cell.getAttribute("data-value") : cell.textContent;
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === "" || y === "") { return (x === "") - (y === ""); }
        var nx = Number(x), ny = Number(y);
        var order = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
        return ascending ? order : -order;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
</script>"""

# Type in an <input class="filter" data-table="ID">: rows of table ID stay shown when they contain every word
# typed (case-insensitive); the element with id ID-count says how many are shown.
FILTER_SCRIPT = """<script>
document.querySelectorAll("input.filter").forEach(function (input) {
  var table = document.getElementById(input.getAttribute("data-table"));
  var count = document.getElementById(input.getAttribute("data-table") + "-count");
  function apply() {
    var words = input.value.toLowerCase().split(/\\s+/).filter(function (word) { return word; });
    var rows = table.tBodies[0].rows, shown = 0;
    for (var i = 0; i < rows.length; i++) {
      var text = rows[i].textContent.toLowerCase();
      var keep = words.every(function (word) { return text.indexOf(word) >= 0; });
      rows[i].style.display = keep ? "" : "none";
      shown += keep ? 1 : 0;
    }
    if (count) { count.textContent = shown + " of " + rows.length + " shown"; }
  }
  input.addEventListener("input", apply);
  apply();
});
</script>"""


def _document(title: str, body: list[str], scripts: tuple[str, ...] = ()) -> str:
    """A whole self-contained page: no request leaves it (styles and scripts inline, charts as data URIs)."""
    escaped = html.escape(title)
    head = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', NO_FAVICON, f"<title>{escaped}</title>",
            PAGE_STYLE, "</head><body>", '<div class="container">', f"<h1>{escaped}</h1>"]
    return "\n".join([*head, *body, "</div>", *scripts, "</body></html>"])
