"""Errors a user can cause when pointing a worker at a model, or a scheduler at a worker."""

from __future__ import annotations


class ModelLoadError(ValueError):
    """The model directory cannot be served (bad config, bad tensor shapes, unsupported feature)."""


class UnsupportedArchitectureError(ModelLoadError):
    """config.json names an architecture (or a feature of one) this worker does not implement."""


class MissingWeightsError(ModelLoadError):
    """A weight file, or a tensor the model needs, is not in the model directory."""


class InvalidPlanError(ValueError):
    """A StepPlan that the worker refuses to run (it is reported in StepResult.error)."""


class PipelineBrokenError(RuntimeError):
    """The workers of a pipeline fell out of step or lost each other: this worker cannot run
    another plan, and its pipeline must be restarted."""
