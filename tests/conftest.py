"""Shared fixtures: where the corpora are, and hub access switched off for every test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# tests never reach a model hub: a test that tries fails fast instead of hanging
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared corpora (../shared/data or $VPTQ_RS_DATA_DIR); skips when absent."""
    path = Path(os.environ.get("VPTQ_RS_DATA_DIR", SHARED_DATA))
    if not (path / "wikitext-2-raw" / "wiki.test.raw").is_file():
        pytest.skip(f"corpora not found at {path}")
    return path
