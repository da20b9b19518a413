"""Tests for rbi.optimize."""
