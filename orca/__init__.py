"""Orca: the top package. The `orca` CLI, the local launcher and the offline engine.

from orca import LLM, SamplingParams
"""

from orca.sampling_params import SamplingParams

__all__ = ["LLM", "SamplingParams", "RequestOutput"]


def __getattr__(name: str):
    # LLM pulls in torch and the worker; import it only when asked for.
    if name in ("LLM", "RequestOutput"):
        from orca import llm

        return getattr(llm, name)
    raise AttributeError(name)
