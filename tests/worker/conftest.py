"""Shared fixtures of the worker tests: tiny checkpoints and their transformers twins."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_models import load_hf_model, make_tiny_checkpoint  # tests/ is on pytest's pythonpath


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """arch -> path of its tiny checkpoint, written once per session."""
    paths: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in paths:
            paths[arch] = make_tiny_checkpoint(arch, tmp_path_factory.mktemp(arch))
        return paths[arch]

    return get


@pytest.fixture(scope="session")
def hf_model(tiny_checkpoint):
    """arch -> the transformers model loaded from its tiny checkpoint (cached)."""
    models = {}

    def get(arch: str):
        if arch not in models:
            models[arch] = load_hf_model(tiny_checkpoint(arch))
        return models[arch]

    return get
