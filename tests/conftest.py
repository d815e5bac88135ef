"""Shared fixtures: one small synthetic case per site, written once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
from federation import copy_drawn_case


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory) -> Path:
    """A data root holding ``site-1-000`` and ``site-2-000`` (small size, seed 0).

    Shared by many tests: treat it as read-only (copy a case before changing it).
    """
    root = tmp_path_factory.mktemp("phantom")
    for site in ("site-1", "site-2"):
        copy_drawn_case(site, 0, root)
    return root


@pytest.fixture(scope="session")
def site1_case(phantom_root) -> Path:
    return phantom_root / "site-1-000"


@pytest.fixture(scope="session")
def site2_case(phantom_root) -> Path:
    return phantom_root / "site-2-000"
