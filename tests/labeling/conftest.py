"""Fixtures for the labeling tests (helpers live in labeling_helpers.py)."""

from __future__ import annotations

import pytest
from labeling_helpers import make_labeling_data


@pytest.fixture(scope="session")
def labeling_data(tmp_path_factory):
    """12 ranked records (3 candidates, 1-3 turns) in two categories, with known per-capability scores."""
    return make_labeling_data(tmp_path_factory.mktemp("labeling-data"))
