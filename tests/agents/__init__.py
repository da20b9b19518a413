"""Tests of the deterministic fixers."""
