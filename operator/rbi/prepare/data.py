"""Load the OHLCV files that users actually have into the frame backtesting.py expects.

Real files disagree on everything: header case, leading spaces and trailing
commas (`datetime, open, high, low, close, volume,`), aliases such as `o`/`c`
or `Adj Close`, epoch timestamps in seconds or milliseconds, a datetime that
was written as the index. `load_ohlcv` absorbs all of that and returns exactly
Open/High/Low/Close/Volume as floats, or raises a `DataError` that says what
is wrong with which file.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import tempfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from rbi.errors import DataError

__all__ = ["OHLCV_COLUMNS", "SUPPORTED_SUFFIXES", "dataset_hash", "load_ohlcv", "materialize_csv"]

OHLCV_COLUMNS: tuple[str, ...] = ("Open", "High", "Low", "Close", "Volume")
SUPPORTED_SUFFIXES: tuple[str, ...] = (".csv", ".csv.gz", ".parquet", ".pq")
INDEX_NAME = "Datetime"

# Aliases after `_normalise_name`, in order of preference: a file with both
# `close` and `adj_close` uses `close`.
_ALIASES: dict[str, tuple[str, ...]] = {
    "Open": ("open", "o", "open_price", "opening_price"),
    "High": ("high", "h", "high_price", "max"),
    "Low": ("low", "l", "low_price", "min"),
    "Close": ("close", "c", "close_price", "closing_price", "last", "last_price", "adj_close", "adjclose"),
    "Volume": ("volume", "v", "vol", "base_volume", "volume_base"),
}
# Unambiguous names first; `date` and `time` may be two halves of one moment.
_DATETIME_ALIASES: tuple[str, ...] = (
    "datetime",
    "date_time",
    "timestamp",
    "time_stamp",
    "open_time",
    "opentime",
)
_DATETIME_FALLBACKS: tuple[str, ...] = ("date", "time", "ts", "dt")
# Names that pandas or pyarrow give to a column that had no header.
_UNNAMED = re.compile(r"^(unnamed(_\d+)*|index|level_0|__index_level_\d+__|)$")

_CHUNK = 1 << 20


# --------------------------------------------------------------------------- files


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in sorted(SUPPORTED_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    raise DataError(f"unsupported dataset format for {path}: expected one of {', '.join(SUPPORTED_SUFFIXES)}")


def _existing_file(path: str | os.PathLike[str]) -> Path:
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise DataError(f"dataset not found: {resolved}")
    if not resolved.is_file():
        raise DataError(f"dataset is not a regular file: {resolved}")
    return resolved


def dataset_hash(path: str | os.PathLike[str]) -> str:
    """sha256 of the file's bytes, read in chunks so large datasets stay cheap."""
    file = _existing_file(path)
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def _text_stream(path: Path, suffix: str) -> Iterator[IO[str]]:
    try:
        if suffix == ".csv.gz":
            with gzip.open(path, "rt", encoding="utf-8-sig", newline="") as gz:
                yield gz
        else:
            with path.open("r", encoding="utf-8-sig", newline="") as plain:
                yield plain
    except (OSError, EOFError, zlib.error) as exc:
        # BadGzipFile is an OSError; a truncated stream raises EOFError.
        raise DataError(f"cannot read {path}: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"cannot read {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def _first_lines(path: Path, suffix: str, count: int = 2) -> list[str]:
    lines: list[str] = []
    with _text_stream(path, suffix) as stream:
        for line in stream:
            if line.strip():
                lines.append(line.rstrip("\r\n"))
            if len(lines) == count:
                break
    return lines


def _sniff_separator(header: str) -> str:
    counts = {sep: header.count(sep) for sep in (",", ";", "\t", "|")}
    best = max(counts, key=lambda sep: counts[sep])
    return best if counts[best] else ","


def _read_csv(path: Path, suffix: str) -> pd.DataFrame:
    lines = _first_lines(path, suffix)
    if not lines:
        raise DataError(f"dataset is empty: {path}")
    sep = _sniff_separator(lines[0])
    # Rows that end in a separator while the header does not would otherwise make
    # pandas take the first column as the index and shift every column by one.
    index_col: Any = None
    if len(lines) > 1 and lines[1].rstrip().endswith(sep) and not lines[0].rstrip().endswith(sep):
        index_col = False
    try:
        with _text_stream(path, suffix) as stream:
            frame = pd.read_csv(stream, sep=sep, skipinitialspace=True, index_col=index_col)
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"dataset is empty: {path}") from exc
    except pd.errors.ParserError as exc:
        raise DataError(f"cannot parse {path} as CSV: {exc}") from exc
    return frame


def _read_parquet(path: Path) -> pd.DataFrame:
    if path.stat().st_size == 0:
        raise DataError(f"dataset is empty: {path}")
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises its own ArrowInvalid hierarchy
        raise DataError(f"cannot read {path} as Parquet: {exc}") from exc


# --------------------------------------------------------------------------- columns


def _normalise_name(name: object) -> str:
    """' Adj Close' -> 'adj_close', '<DATE>' -> 'date', 'Unnamed: 6' -> 'unnamed_6'."""
    text = re.sub(r"[^0-9a-z]+", "_", str(name).strip().lower())
    return text.strip("_")


def _looks_like_datetimes(values: pd.Series) -> bool:
    sample = values.dropna().head(20)
    if sample.empty or pd.api.types.is_numeric_dtype(sample):
        return False
    parsed = pd.to_datetime(sample.astype(str), errors="coerce", format="mixed")
    return bool(parsed.notna().all())


def _columns_by_name(frame: pd.DataFrame) -> dict[str, Any]:
    """Normalised name -> original column label, first one wins on clashes."""
    names: dict[str, Any] = {}
    for column in frame.columns:
        names.setdefault(_normalise_name(column), column)
    return names


def _pick(names: dict[str, Any], aliases: Sequence[str]) -> Any | None:
    for alias in aliases:
        if alias in names:
            return names[alias]
    return None


def _pick_volume(names: dict[str, Any]) -> Any | None:
    exact = _pick(names, _ALIASES["Volume"])
    if exact is not None:
        return exact
    # 'Volume BTC', 'volume_usdt': exports that name the unit; the first is the base asset.
    for name, column in names.items():
        if name.startswith("volume_") or name.startswith("vol_"):
            return column
    return None


# --------------------------------------------------------------------------- values


def _to_float(frame: pd.DataFrame, column: Any, target: str, path: Path) -> pd.Series:
    values = frame[column]
    if pd.api.types.is_bool_dtype(values):
        raise DataError(f"column '{column}' ({target}) in {path} holds booleans, not prices")
    if pd.api.types.is_numeric_dtype(values):
        return values.astype("float64")
    text = values.astype("string").str.strip()
    # Thousands separators only: "1,234.5" -> "1234.5".
    text = text.str.replace(r"(?<=\d),(?=\d{3}\b)", "", regex=True)
    numbers = pd.to_numeric(text, errors="coerce")
    bad = numbers.isna() & text.notna() & (text != "")
    if bad.any():
        position = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            f"column '{column}' ({target}) in {path} is not numeric: "
            f"row {position + 1} holds {values.iloc[position]!r}"
        )
    return numbers.astype("float64")


def _epoch_unit(numbers: pd.Series) -> str:
    """Seconds, milliseconds, micro- or nanoseconds, from the size of the numbers."""
    magnitude = float(numbers.abs().median())
    if magnitude < 1e11:
        return "s"
    if magnitude < 1e14:
        return "ms"
    if magnitude < 1e17:
        return "us"
    return "ns"


def _parse_datetimes(values: pd.Series, column: Any, path: Path) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(values):
        return values
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        numbers = values.astype("float64")
        present = numbers.dropna()
        if not present.empty and present.between(1e7, 3e7).all() and (present % 1 == 0).all():
            # 20230101-style dates stored as integers.
            return pd.to_datetime(numbers.astype("Int64").astype("string"), format="%Y%m%d", errors="coerce")
        unit = _epoch_unit(present) if not present.empty else "s"
        return pd.to_datetime(numbers, unit=unit, errors="coerce")
    text = values.astype("string").str.strip()
    parsed: pd.Series | None = None
    for options in ({}, {"format": "mixed"}, {"format": "mixed", "utc": True}):
        try:
            parsed = pd.to_datetime(text, errors="raise", **options)
        except (ValueError, TypeError):
            continue
        if pd.api.types.is_datetime64_any_dtype(parsed):
            break
        parsed = None  # mixed UTC offsets come back as objects; retry in UTC
    if parsed is None:
        bad = pd.to_datetime(text, errors="coerce", format="mixed", utc=True).isna() & text.notna()
        example = text[bad].iloc[0] if bad.any() else text.dropna().iloc[0]
        raise DataError(f"column '{column}' in {path} does not hold dates or times, e.g. {example!r}")
    return parsed


def _datetime_series(frame: pd.DataFrame, names: dict[str, Any], path: Path) -> pd.Series | None:
    column = _pick(names, _DATETIME_ALIASES)
    date_col, time_col = names.get("date"), names.get("time")
    if column is None and date_col is not None and time_col is not None:
        date_text = frame[date_col].astype("string").str.strip()
        time_text = frame[time_col].astype("string").str.strip()
        if not pd.api.types.is_numeric_dtype(frame[time_col]):
            # MetaTrader-style exports split the moment over two columns.
            return _parse_datetimes(date_text + " " + time_text, f"{date_col}+{time_col}", path)
    if column is None:
        column = _pick(names, _DATETIME_FALLBACKS)
    if column is None:
        # Parquet keeps datetime dtypes, whatever the column is called.
        column = next((c for c in frame.columns if pd.api.types.is_datetime64_any_dtype(frame[c])), None)
    if column is None:
        # A datetime written as the index comes back as an unnamed first column.
        for name, original in names.items():
            if _UNNAMED.match(name) and _looks_like_datetimes(frame[original]):
                column = original
                break
    if column is None:
        return None
    return _parse_datetimes(frame[column], column, path)


def _bring_index_into_columns(frame: pd.DataFrame) -> pd.DataFrame:
    if isinstance(frame.index, pd.RangeIndex) and frame.index.name is None:
        return frame
    return frame.reset_index()


def _normalise(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    frame = _bring_index_into_columns(frame)
    names = _columns_by_name(frame)
    picked: dict[str, Any] = {}
    for target in ("Open", "High", "Low", "Close"):
        picked[target] = _pick(names, _ALIASES[target])
    missing = [target for target, column in picked.items() if column is None]
    if missing:
        found = [str(c) for c in frame.columns if not frame[c].isna().all()]
        raise DataError(
            f"no {'/'.join(missing)} column in {path}: need open, high, low and close "
            f"(any case, aliases o/h/l/c accepted); columns found: {found}"
        )
    volume = _pick_volume(names)

    data = {target: _to_float(frame, column, target, path) for target, column in picked.items()}
    data["Volume"] = (
        _to_float(frame, volume, "Volume", path).fillna(0.0)
        if volume is not None
        # backtesting.py needs a Volume column but no strategy can trade on a
        # missing one; zeros keep it numeric where NaN would poison indicators.
        else pd.Series(0.0, index=frame.index)
    )
    result = pd.DataFrame(data, index=frame.index)

    when = _datetime_series(frame, names, path)
    if when is not None:
        result.index = pd.DatetimeIndex(when, name=INDEX_NAME)
        result = result[result.index.notna()]
        # A stable sort keeps file order among equal stamps, so 'last' means last in the file.
        result = result.sort_index(kind="stable")
        result = result[~result.index.duplicated(keep="last")]
    result = result.dropna(subset=["Open", "High", "Low", "Close"])
    if when is None:
        result = result.reset_index(drop=True)
    return result.astype("float64")


# --------------------------------------------------------------------------- public


def load_ohlcv(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read CSV, CSV.gz or Parquet into Open/High/Low/Close/Volume floats.

    The index is a sorted, duplicate-free DatetimeIndex named 'Datetime' when
    the file has any date or time column (or a datetime index), else a RangeIndex.
    """
    file = _existing_file(path)
    suffix = _suffix(file)
    if file.stat().st_size == 0:
        raise DataError(f"dataset is empty: {file}")
    raw = _read_parquet(file) if suffix in (".parquet", ".pq") else _read_csv(file, suffix)
    if raw.empty and len(raw.columns) == 0:
        raise DataError(f"dataset is empty: {file}")
    frame = _normalise(raw, file)
    if len(frame) < 2:
        raise DataError(
            f"dataset {file} has {len(frame)} usable row(s) with open/high/low/close; "
            "a backtest needs at least 2"
        )
    return frame


_Writer = Callable[[IO[bytes]], None]


def _atomic_write(target: Path, write: _Writer) -> None:
    """Write through a temporary file in the same directory, then rename over the target.

    Concurrent runs that materialise the same dataset then each rename a
    complete file into place; no reader ever sees half a CSV.
    """
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _copy_gunzip(source: Path) -> _Writer:
    def write(handle: IO[bytes]) -> None:
        try:
            with gzip.open(source, "rb") as gz:
                shutil.copyfileobj(gz, handle, _CHUNK)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"cannot decompress {source}: {exc}") from exc

    return write


def _render_csv(frame: pd.DataFrame) -> _Writer:
    def write(handle: IO[bytes]) -> None:
        out = frame.rename(columns=str.lower)
        if isinstance(out.index, pd.DatetimeIndex):
            out = out.rename_axis("datetime").reset_index()
        handle.write(out.to_csv(index=False, date_format="%Y-%m-%d %H:%M:%S").encode("utf-8"))

    return write


def materialize_csv(path: str | os.PathLike[str], cache_dir: Path) -> Path:
    """A plain CSV of the dataset that a script can `pd.read_csv` itself.

    A .csv is returned as it is. A .csv.gz is decompressed byte for byte; a
    Parquet file is rendered with a `datetime,open,high,low,close,volume`
    header. Either lands in `cache_dir` under the source's sha256, so a second
    call (or another worker) reuses it.
    """
    source = _existing_file(path)
    suffix = _suffix(source)
    if suffix == ".csv":
        return source
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / f"{dataset_hash(source)}.csv"
    if target.is_file():
        return target
    if suffix == ".csv.gz":
        _atomic_write(target, _copy_gunzip(source))
    else:
        _atomic_write(target, _render_csv(load_ohlcv(source)))
    return target
