"""load_ohlcv, dataset_hash and materialize_csv on the real dataset and on the shapes users bring."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rbi.errors import DataError
from rbi.prepare.data import OHLCV_COLUMNS, dataset_hash, load_ohlcv, materialize_csv


def _rows_by_hand(text: str) -> list[list[str]]:
    """The data rows parsed with the csv module only, as an independent oracle."""
    reader = csv.reader(io.StringIO(text), skipinitialspace=True)
    next(reader)
    return [row for row in reader if row]


def _assert_ohlcv_frame(frame: pd.DataFrame) -> None:
    assert list(frame.columns) == list(OHLCV_COLUMNS)
    assert all(dtype == np.float64 for dtype in frame.dtypes)
    assert not frame[["Open", "High", "Low", "Close"]].isna().any().any()


# --------------------------------------------------------------------------- the real file


def test_real_csv_matches_a_hand_parse(btc_csv: Path, btc_text: str) -> None:
    rows = _rows_by_hand(btc_text)
    frame = load_ohlcv(btc_csv)

    _assert_ohlcv_frame(frame)
    assert isinstance(frame.index, pd.DatetimeIndex)
    assert frame.index.name == "Datetime"
    assert frame.index.is_monotonic_increasing and frame.index.is_unique
    assert len(frame) == len(rows) == 31066
    assert frame.index[0] == pd.Timestamp(rows[0][0]) == pd.Timestamp("2023-01-01 00:00:00")
    assert frame.index[-1] == pd.Timestamp(rows[-1][0]) == pd.Timestamp("2023-11-20 19:15:00")
    for position in (0, 1, 15_000, len(rows) - 1):
        expected = [float(v) for v in rows[position][1:6]]
        assert frame.iloc[position].tolist() == expected


def test_gzip_copy_loads_the_same_frame(btc_csv: Path, btc_gz: Path) -> None:
    pd.testing.assert_frame_equal(load_ohlcv(btc_gz), load_ohlcv(btc_csv))


def test_parquet_copy_loads_the_same_frame(btc_csv: Path, tmp_path: Path) -> None:
    expected = load_ohlcv(btc_csv)
    with_index = tmp_path / "indexed.parquet"
    expected.to_parquet(with_index)
    pd.testing.assert_frame_equal(load_ohlcv(with_index), expected)

    # A Binance-style frame: lowercase columns and the time as a plain column.
    as_columns = tmp_path / "columns.parquet"
    expected.rename(columns=str.lower).rename_axis("timestamp").reset_index().to_parquet(as_columns)
    pd.testing.assert_frame_equal(load_ohlcv(as_columns), expected)


def test_loaded_frame_runs_in_backtesting(btc_gz: Path) -> None:
    from backtesting import Backtest, Strategy

    class BuyOnce(Strategy):
        def init(self) -> None:
            pass

        def next(self) -> None:
            if not self.position:
                self.buy(size=0.5)

    frame = load_ohlcv(btc_gz)
    stats = Backtest(frame, BuyOnce, cash=1_000_000, finalize_trades=True).run()
    assert stats["# Trades"] == 1
    assert stats["Start"] == frame.index[0]


# --------------------------------------------------------------------------- header shapes

SAMPLE = [
    ("2023-01-01 00:00:00", 10.0, 12.0, 9.0, 11.0, 100.0),
    ("2023-01-01 00:15:00", 11.0, 13.0, 10.0, 12.0, 200.0),
    ("2023-01-01 00:30:00", 12.0, 14.0, 11.0, 13.0, 300.0),
]


def _expected(volume: bool = True) -> pd.DataFrame:
    index = pd.DatetimeIndex([pd.Timestamp(r[0]) for r in SAMPLE], name="Datetime")
    data = {name: [float(r[i + 1]) for r in SAMPLE] for i, name in enumerate(OHLCV_COLUMNS)}
    if not volume:
        data["Volume"] = [0.0] * len(SAMPLE)
    return pd.DataFrame(data, index=index)


def _write(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _rows(template: str = "{},{},{},{},{},{}") -> list[str]:
    return [template.format(*row) for row in SAMPLE]


@pytest.mark.parametrize(
    "header",
    [
        "Datetime,Open,High,Low,Close,Volume",
        "datetime,open,high,low,close,volume",
        "DATE,OPEN,HIGH,LOW,CLOSE,VOLUME",
        "timestamp,o,h,l,c,v",
        "Date,Open,High,Low,Adj Close,Volume",
        "time,open,high,low,close,vol",
        " Open Time , Open , High , Low , Close , Volume ",
    ],
)
def test_header_variants(tmp_path: Path, header: str) -> None:
    frame = load_ohlcv(_write(tmp_path / "d.csv", header, _rows()))
    pd.testing.assert_frame_equal(frame, _expected(), check_index_type=False, check_freq=False)


def test_leading_spaces_and_trailing_comma(tmp_path: Path) -> None:
    rows = _rows("{}, {}, {}, {}, {}, {},")
    frame = load_ohlcv(_write(tmp_path / "d.csv", "datetime, open, high, low, close, volume,", rows))
    pd.testing.assert_frame_equal(frame, _expected(), check_freq=False)


def test_trailing_comma_on_rows_only_does_not_shift_columns(tmp_path: Path) -> None:
    rows = _rows("{},{},{},{},{},{},")
    frame = load_ohlcv(_write(tmp_path / "d.csv", "datetime,open,high,low,close,volume", rows))
    pd.testing.assert_frame_equal(frame, _expected(), check_freq=False)


def test_close_is_preferred_over_adj_close(tmp_path: Path) -> None:
    rows = [f"{r[0]},{r[1]},{r[2]},{r[3]},{r[4]},999,{r[5]}" for r in SAMPLE]
    frame = load_ohlcv(_write(tmp_path / "d.csv", "Date,Open,High,Low,Close,Adj Close,Volume", rows))
    assert frame["Close"].tolist() == [r[4] for r in SAMPLE]


@pytest.mark.parametrize(("unit", "scale"), [("s", 1), ("ms", 1_000)])
def test_unix_epoch_timestamps(tmp_path: Path, unit: str, scale: int) -> None:
    rows = [
        f"{int(pd.Timestamp(r[0]).timestamp()) * scale},{r[1]},{r[2]},{r[3]},{r[4]},{r[5]}" for r in SAMPLE
    ]
    frame = load_ohlcv(_write(tmp_path / "d.csv", "open_time,open,high,low,close,volume", rows))
    pd.testing.assert_frame_equal(frame, _expected(), check_index_type=False, check_freq=False)
    assert frame.index[0] == pd.Timestamp(SAMPLE[0][0]), unit


def test_datetime_written_as_the_index(tmp_path: Path) -> None:
    # What `df.to_csv(path)` writes when the index has no name.
    source = _expected().rename_axis(None)
    source.to_csv(tmp_path / "d.csv")
    assert (tmp_path / "d.csv").read_text().startswith(",Open,")
    pd.testing.assert_frame_equal(load_ohlcv(tmp_path / "d.csv"), _expected(), check_freq=False)


def test_datetime_as_index_with_header_one_field_short(tmp_path: Path) -> None:
    # Rows carry one more field than the header: pandas takes the first as the index.
    frame = load_ohlcv(_write(tmp_path / "d.csv", "Open,High,Low,Close,Volume", _rows()))
    pd.testing.assert_frame_equal(frame, _expected(), check_freq=False)


def test_plain_row_counter_index_gives_a_range_index(tmp_path: Path) -> None:
    source = _expected().reset_index(drop=True)
    source.to_csv(tmp_path / "d.csv")  # writes an unnamed 0..n-1 column
    frame = load_ohlcv(tmp_path / "d.csv")
    assert isinstance(frame.index, pd.RangeIndex)
    assert frame["Close"].tolist() == source["Close"].tolist()


def test_missing_volume_is_zero(tmp_path: Path) -> None:
    rows = [f"{r[0]},{r[1]},{r[2]},{r[3]},{r[4]}" for r in SAMPLE]
    frame = load_ohlcv(_write(tmp_path / "d.csv", "Date,Open,High,Low,Close", rows))
    pd.testing.assert_frame_equal(frame, _expected(volume=False), check_freq=False)


def test_no_datetime_column_gives_a_range_index(tmp_path: Path) -> None:
    rows = [f"{r[1]},{r[2]},{r[3]},{r[4]},{r[5]}" for r in SAMPLE]
    frame = load_ohlcv(_write(tmp_path / "d.csv", "open,high,low,close,volume", rows))
    assert isinstance(frame.index, pd.RangeIndex)
    assert frame["Open"].tolist() == [r[1] for r in SAMPLE]


def test_unsorted_duplicates_and_gaps_are_cleaned(tmp_path: Path) -> None:
    rows = [
        "2023-01-01 00:30:00,12,14,11,13,300",
        "2023-01-01 00:00:00,10,12,9,11,100",
        "2023-01-01 00:15:00,1,1,1,1,1",  # superseded by the later duplicate
        "2023-01-01 00:45:00,,,,,",  # no prices at all
        "2023-01-01 00:15:00,11,13,10,12,200",
    ]
    frame = load_ohlcv(_write(tmp_path / "d.csv", "datetime,open,high,low,close,volume", rows))
    pd.testing.assert_frame_equal(frame, _expected(), check_freq=False)


def test_semicolon_separated(tmp_path: Path) -> None:
    frame = load_ohlcv(
        _write(tmp_path / "d.csv", "Date;Open;High;Low;Close;Volume", _rows("{};{};{};{};{};{}"))
    )
    pd.testing.assert_frame_equal(frame, _expected(), check_freq=False)


def test_date_and_time_in_two_columns(tmp_path: Path) -> None:
    rows = [f"{r[0].replace(' ', ',')},{r[1]},{r[2]},{r[3]},{r[4]},{r[5]}" for r in SAMPLE]
    frame = load_ohlcv(_write(tmp_path / "d.csv", "<DATE>,<TIME>,<OPEN>,<HIGH>,<LOW>,<CLOSE>,<VOL>", rows))
    pd.testing.assert_frame_equal(frame, _expected(), check_freq=False)


def test_timezone_offsets_are_kept(tmp_path: Path) -> None:
    rows = _rows("{}+00:00,{},{},{},{},{}")
    frame = load_ohlcv(_write(tmp_path / "d.csv", "datetime,open,high,low,close,volume", rows))
    assert str(frame.index.tz) == "UTC"
    assert frame.index[0] == pd.Timestamp(SAMPLE[0][0], tz="UTC")


# --------------------------------------------------------------------------- errors


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "BTC.csv"
    with pytest.raises(DataError, match=str(missing)):
        load_ohlcv(missing)


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_empty_file(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "d.csv").write_bytes(content)
    with pytest.raises(DataError, match="empty"):
        load_ohlcv(tmp_path / "d.csv")


def test_empty_gzip(tmp_path: Path) -> None:
    (tmp_path / "d.csv.gz").write_bytes(gzip.compress(b""))
    with pytest.raises(DataError, match="empty"):
        load_ohlcv(tmp_path / "d.csv.gz")


def test_corrupt_gzip(tmp_path: Path) -> None:
    (tmp_path / "d.csv.gz").write_bytes(b"this is not gzip")
    with pytest.raises(DataError, match="cannot read"):
        load_ohlcv(tmp_path / "d.csv.gz")


def test_no_ohlc_columns_lists_what_was_found(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", "when,price,amount", ["2023-01-01,1,2", "2023-01-02,3,4"])
    with pytest.raises(DataError) as caught:
        load_ohlcv(path)
    message = str(caught.value)
    assert "Open/High/Low/Close" in message
    assert "['when', 'price', 'amount']" in message


def test_partly_missing_ohlc_names_the_missing_ones(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", "date,open,close", ["2023-01-01,1,2", "2023-01-02,3,4"])
    with pytest.raises(DataError, match=r"no High/Low column"):
        load_ohlcv(path)


def test_non_numeric_price_names_column_row_and_value(tmp_path: Path) -> None:
    rows = _rows()
    rows[1] = rows[1].replace(",13.0,", ",thirteen,")
    path = _write(tmp_path / "d.csv", "datetime,open,high,low,close,volume", rows)
    with pytest.raises(DataError, match=r"column 'high' \(High\).*row 2 holds 'thirteen'"):
        load_ohlcv(path)


def test_unparsable_datetime(tmp_path: Path) -> None:
    rows = _rows()
    rows[2] = rows[2].replace(SAMPLE[2][0], "yesterday-ish")
    path = _write(tmp_path / "d.csv", "datetime,open,high,low,close,volume", rows)
    with pytest.raises(DataError, match=r"column 'datetime'.*'yesterday-ish'"):
        load_ohlcv(path)


@pytest.mark.parametrize("count", [0, 1])
def test_fewer_than_two_rows(tmp_path: Path, count: int) -> None:
    path = _write(tmp_path / "d.csv", "datetime,open,high,low,close,volume", _rows()[:count])
    with pytest.raises(DataError, match=f"has {count} usable row"):
        load_ohlcv(path)


@pytest.mark.parametrize("name", ["d.xlsx", "d.json", "d.gz", "d"])
def test_unsupported_extension(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_text("x")
    with pytest.raises(DataError, match="unsupported dataset format"):
        load_ohlcv(tmp_path / name)


def test_corrupt_parquet(tmp_path: Path) -> None:
    (tmp_path / "d.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="Parquet"):
        load_ohlcv(tmp_path / "d.parquet")


def test_directory_is_not_a_dataset(tmp_path: Path) -> None:
    (tmp_path / "d.csv").mkdir()
    with pytest.raises(DataError, match="not a regular file"):
        load_ohlcv(tmp_path / "d.csv")


# --------------------------------------------------------------------------- hash and materialise


def test_dataset_hash_is_sha256_of_the_bytes(btc_gz: Path, tmp_path: Path) -> None:
    assert dataset_hash(btc_gz) == hashlib.sha256(btc_gz.read_bytes()).hexdigest()
    other = tmp_path / "o.csv"
    other.write_bytes(btc_gz.read_bytes() + b"x")
    assert dataset_hash(other) != dataset_hash(btc_gz)
    with pytest.raises(DataError, match="not found"):
        dataset_hash(tmp_path / "missing.csv")


def test_materialize_plain_csv_is_returned_as_is(btc_csv: Path, tmp_path: Path) -> None:
    assert materialize_csv(btc_csv, tmp_path / "cache") == btc_csv
    assert not (tmp_path / "cache").exists()


def test_materialize_gzip_gives_the_original_text(btc_gz: Path, btc_text: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = materialize_csv(btc_gz, cache)
    assert first.parent == cache and first.suffix == ".csv"
    assert first.stem == hashlib.sha256(btc_gz.read_bytes()).hexdigest()
    assert first.read_text() == btc_text
    stamp = first.stat().st_mtime_ns
    assert materialize_csv(btc_gz, cache) == first
    assert first.stat().st_mtime_ns == stamp  # reused, not rewritten
    assert [p.name for p in cache.iterdir()] == [first.name]  # no temporary files left behind


def test_materialize_parquet_renders_a_readable_csv(btc_csv: Path, tmp_path: Path) -> None:
    frame = load_ohlcv(btc_csv)
    source = tmp_path / "btc.parquet"
    frame.to_parquet(source)
    rendered = materialize_csv(source, tmp_path / "cache")
    text = rendered.read_text()
    assert text.splitlines()[0] == "datetime,open,high,low,close,volume"
    assert text.splitlines()[1].startswith("2023-01-01 00:00:00,")
    # The way generated scripts read it back.
    back = pd.read_csv(rendered, parse_dates=["datetime"], index_col="datetime")
    assert back.index[0] == datetime(2023, 1, 1)
    np.testing.assert_allclose(back["close"].to_numpy(), frame["Close"].to_numpy())
    pd.testing.assert_frame_equal(load_ohlcv(rendered), frame)


def test_materialize_missing_source(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        materialize_csv(tmp_path / "x.csv.gz", tmp_path / "cache")
