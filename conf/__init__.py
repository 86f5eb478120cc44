"""Hydra configs of any2point, shipped as package data (``any2point.conf``); the layout is in docs/design.md."""
