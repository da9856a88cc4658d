"""kvtui's benchmarks: run ``python -m benchmarks [NAME ...] [--quick]`` (see README.md)."""

from __future__ import annotations
