"""rbi: run LLM-generated backtesting.py strategies in a sandbox, store every statistic, improve them."""

__version__ = "0.1.0"
