"""Fixtures for the search and export tests: the memory model's estimator and a synthetic dataset.

Every assertion holds for any estimator whose peak grows with the micro batch and the cutoff.
search_helpers sits beside this file, so the tests below import it by name (pytest puts a conftest's
folder on the import path).
"""

from __future__ import annotations

import pytest
import search_helpers


@pytest.fixture(scope="session")
def estimator():
    return search_helpers.estimator()


@pytest.fixture(scope="session")
def data():
    return search_helpers.make_data()
