"""Failures of the scheduler core: one type per cause."""

from __future__ import annotations


class PromptTooLongError(ValueError):
    """The prompt leaves no room for output in the model's context, or can never fit in the
    KV pool (with the `reserve` policy: prompt plus max_tokens cannot fit)."""


class DuplicateRequestError(ValueError):
    """A request id is already known to the scheduler."""


class InvalidRequestError(ValueError):
    """A request is malformed: empty prompt, max_tokens < 1, or already done."""


class WorkerStepError(RuntimeError):
    """A worker could not run a plan, or returned a result that does not match it.

    The scheduler's state is unchanged when this is raised: the plan is still in flight.
    """
