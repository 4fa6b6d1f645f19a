"""Shared fixtures. The Makefile and .ci/run export the HF offline variables before Python starts; they are
set here too so that a bare ``pytest`` never waits on a hub."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _shared_data() -> Path | None:
    value = os.environ.get("CTIIR_SHARED_DATA")
    if not value:
        return None
    path = Path(value)
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real annotation files (FashionIQ, Shoes, CIRR sample), or a clean skip where they are absent."""
    path = _shared_data()
    if path is None:
        pytest.skip("real annotation files not available (set CTIIR_SHARED_DATA to shared/data)")
    return path


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``tiny`` synthetic benchmark (seed 0), written once per test module."""
    from ctiir.datamodules.synthetic import generate

    return generate(tmp_path_factory.mktemp("synth") / "data", seed=0, size="tiny")


@pytest.fixture
def restore_logging():
    """``ctiir.cli.main`` configures logging and warnings for the process it runs in; give the next test the
    state this one found. Modules that call ``main`` use it for every test (``pytestmark``)."""
    import logging
    import warnings

    from ctiir.cli import LIGHTNING_RANK_ZERO_LOGGERS

    names = ("", "ctiir", *LIGHTNING_RANK_ZERO_LOGGERS)
    saved = {name: (logging.getLogger(name).level, list(logging.getLogger(name).filters)) for name in names}
    with warnings.catch_warnings():
        yield
    for name, (level, filters) in saved.items():
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.filters[:] = filters
