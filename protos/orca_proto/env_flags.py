"""The services' configuration contract: every flag defaults from an `ORCA_*` variable.

Containers (Helm, compose) configure the services through those variables; a flag on the
command line wins. The environment is passed in, never read at import time.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping


def env_flag_adder(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> Callable[..., None]:
    """A function `add(name, var, default, help, **argparse_kwargs)` that declares a flag
    whose default is `env[var]` when set, else `default`; its help names the variable."""

    def add(name: str, var: str, default: str | None, help_: str, **kwargs) -> None:
        parser.add_argument(
            name, default=env.get(var, default), help=f"{help_} (env {var})", **kwargs
        )

    return add
