"""Datasets of other markets for the cross-market check (`validation.datasets`).

backtesting.py ships real data of three markets in `backtesting.test`: EURUSD hourly, GOOG daily
and BTCUSD monthly. rbi.datasets.bundled_dataset resolves those names (in the sandbox image too,
where the operator's Jobs read them as `bundled:GOOG`), else a dataset bundled with rbi.
"""

from __future__ import annotations

from pathlib import Path

from rbi.datasets import BACKTESTING_TEST, bundled_dataset

__all__ = ["BACKTESTING_TEST", "market_path"]


def market_path(name: str) -> Path:
    return bundled_dataset(name)
