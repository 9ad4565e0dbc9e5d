"""Fixtures for the synthetic world tests: one small generated data set per session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def synthetic_world():
    from dmoerm_trl.synthetic.world import SyntheticWorld

    return SyntheticWorld()


@pytest.fixture(scope="session")
def small_synthetic_data(tmp_path_factory):
    """15 training and 5 test pairs per category, written to disk (the paths dict of generate_files)."""
    from dmoerm_trl.synthetic import generate_files

    return generate_files(
        tmp_path_factory.mktemp("synthetic"), pairs_per_category=15, test_pairs_per_category=5, seed=7
    )
