"""The real stack for end-to-end tests: embedded Redis, worker, scheduler and gateway as
separate processes (orca.launcher.LocalStack) serving the demo model on free ports."""

from __future__ import annotations

import pytest
from stack_testing import e2e_serve_config

from orca.demo_model import write_demo_model
from orca.launcher import LocalStack


@pytest.fixture(scope="session")
def demo_model_dir(tmp_path_factory):
    """The demo checkpoint (random Llama + real BPE tokenizer with a chat template)."""
    return write_demo_model(tmp_path_factory.mktemp("demo") / "demo-model")


@pytest.fixture(scope="session")
def stack(demo_model_dir, tmp_path_factory):
    """One running stack for the whole session."""
    config = e2e_serve_config(
        demo_model_dir, tmp_path_factory.mktemp("stack-logs"), 180, max_num_seqs=64
    )
    with LocalStack(config) as running:
        yield running


@pytest.fixture(scope="session")
def offline_llm(demo_model_dir):
    """The offline engine on the same checkpoint: the reference for the stack's outputs."""
    from orca import LLM

    return LLM(model=str(demo_model_dir), dtype="float32")
