"""Fixtures for the chart checks: each value set under values/ is rendered
once by Helm's Go SDK and shared by every check that takes `rendered`."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rendering import Rendered, load_values, render_set, value_sets  # noqa: E402


@pytest.fixture(params=value_sets())
def value_set(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def rendered(value_set: str) -> Rendered:
    return render_set(value_set)


@pytest.fixture
def overrides(value_set: str) -> dict:
    return load_values(value_set)
