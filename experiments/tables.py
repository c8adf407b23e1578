"""Tables: per-seed rows grouped into mean, 95% confidence half-width and n; CSV files written
atomically and read back with their numbers typed."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Iterable

from toybigram.runio import atomic_write_text

_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def mean_ci(values: Iterable[float | None]) -> tuple[float, float, int]:
    """Mean, half-width of the 95% t confidence interval (over seeds), and n (finite values only)."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(xs)
    if n == 0:
        return math.nan, math.nan, 0
    mean = sum(xs) / n
    if n == 1:
        return mean, math.nan, 1
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return mean, _T975.get(n - 1, 1.96) * sd / math.sqrt(n), n


def summarise(rows: list[dict], keys: list[str], values: list[str]) -> list[dict]:
    """Group per-seed rows by ``keys``; each value column becomes <v>_mean, <v>_ci, <v>_n."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    out = []
    for group_key, members in groups.items():
        row = dict(zip(keys, group_key))
        for v in values:
            mean, ci, n = mean_ci(m.get(v) for m in members)
            row.update({f"{v}_mean": mean, f"{v}_ci": ci, f"{v}_n": n})
        out.append(row)
    return out


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value == math.inf else repr(round(value, 6)))
    return str(value)


def write_table(path: str | Path, rows: list[dict], columns: list[str] | None = None) -> Path:
    """A CSV table, written atomically (readers see the old table or the whole new one)."""
    columns = columns or list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    atomic_write_text(path, buffer.getvalue())
    return Path(path)



class MissingTable(FileNotFoundError):
    """A figure asked for a table that is not in the data folder."""


def _value(text: str):
    """A CSV cell as written by ``write_table``: '' -> None, numbers as int or float, other text as is."""
    if text == "":
        return None
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number.is_integer() and "." not in text and "e" not in text.lower() and text not in ("inf", "nan") else number


def read_table(data_dir: str | Path, name: str) -> list[dict]:
    """The rows of ``<data_dir>/<name>.csv``; MissingTable says how to make it."""
    path = Path(data_dir) / f"{name}.csv"
    if not path.is_file():
        raise MissingTable(f"no table {path}; run `python experiments/run.py <figure>` (or `make figures`) first")
    with open(path, newline="", encoding="utf-8") as handle:
        return [{k: _value(v) for k, v in row.items()} for row in csv.DictReader(handle)]
