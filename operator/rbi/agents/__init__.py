"""Agents that prepare, run and repair generated strategies; deterministic fixers live in `fixers`."""
