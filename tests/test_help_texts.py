"""Every entry point's --help renders (a stray '%' in a help text crashes argparse)."""

from __future__ import annotations

import subprocess
import sys

import pytest

COMMANDS = [
    ["orca.cli"],
    ["orca.cli", "serve"],
    ["orca.cli", "generate"],
    ["orca.cli", "demo-model"],
    ["orca_gateway.main"],
    ["orca_scheduler.main"],
    ["orca_worker.main"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_renders(command):
    result = subprocess.run(
        [sys.executable, "-m", *command, "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout
