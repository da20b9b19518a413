"""Datasets that ship with rbi, so a fresh machine can run the examples offline."""

from __future__ import annotations

from pathlib import Path

from rbi.errors import DataError

BUNDLED_DIR = Path(__file__).resolve().parent / "datasets"
DEFAULT_DATASET = "BTC-USD-15m"
BACKTESTING_TEST = ("BTCUSD", "EURUSD", "GOOG")  # backtesting.test's EURUSD hourly, GOOG daily, BTCUSD monthly


def bundled_names() -> list[str]:
    return sorted(p.name.split(".")[0] for p in BUNDLED_DIR.glob("*.csv*"))


def bundled_dataset(name: str = DEFAULT_DATASET) -> Path:
    for suffix in (".csv.gz", ".csv", ".parquet"):
        candidate = BUNDLED_DIR / f"{name}{suffix}"
        if candidate.is_file():
            return candidate
    market = name.removeprefix("backtesting.test:").upper()
    if market in BACKTESTING_TEST:
        # Real data of other markets that backtesting.py itself ships (the cross-market check uses them).
        import backtesting.test

        return Path(backtesting.test.__file__).resolve().parent / f"{market}.csv"
    raise DataError(f"no bundled dataset named {name!r}; bundled: {bundled_names()}")
