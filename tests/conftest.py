"""Fixtures: tiny data sets the tests make themselves."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_SHAPE = (32, 32, 16)
TINY_SPACING = (7.5, 7.5, 12.0)


@pytest.fixture(scope="session")
def tiny_phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6-case phantom set at 32 x 32 x 16 in nnU-Net layout (shared, read-only)."""
    from foscu.data.phantom import write_phantom_set

    out = tmp_path_factory.mktemp("phantom") / "raw"
    write_phantom_set(out, 6, TINY_SHAPE, TINY_SPACING, seed=3, workers=1, progress=False)
    return out
