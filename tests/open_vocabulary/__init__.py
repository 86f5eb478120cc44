"""Tests of open vocabulary."""
