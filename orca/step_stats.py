"""Where an engine's steps spend their time: wall time around each plan and the worker's
own phase timings, summed, so a benchmark can tell host overhead from GPU time."""

from __future__ import annotations

from dataclasses import dataclass, field

from orca_proto.v1 import worker_pb2

# A step this slow on a warm engine is an outlier (a JIT compile, an allocator stall).
SLOW_STEP_MS = 100.0


@dataclass
class StepStats:
    """Running sums over executed plans; `reset()` starts a new measurement window."""

    steps: int = 0
    wall_ms: float = 0.0
    prepare_ms: float = 0.0
    forward_ms: float = 0.0
    sample_ms: float = 0.0
    max_wall_ms: float = 0.0
    slow_steps: list[float] = field(default_factory=list)

    def record(self, wall_ms: float, result: worker_pb2.StepResult) -> None:
        """Add one executed plan: its wall time and the worker's phase timings."""
        self.steps += 1
        self.wall_ms += wall_ms
        self.prepare_ms += result.timings.prepare_ms
        self.forward_ms += result.timings.forward_ms
        self.sample_ms += result.timings.sample_ms
        self.max_wall_ms = max(self.max_wall_ms, wall_ms)
        if wall_ms >= SLOW_STEP_MS:
            self.slow_steps.append(round(wall_ms, 1))

    def reset(self) -> None:
        """Forget everything recorded so far."""
        self.__init__()

    def summary(self) -> dict[str, float | int | list[float]]:
        """The sums in milliseconds, with the step count and the slow steps' wall times."""
        return {
            "steps": self.steps,
            "step_wall_ms": round(self.wall_ms, 1),
            "prepare_ms": round(self.prepare_ms, 1),
            "forward_ms": round(self.forward_ms, 1),
            "sample_ms": round(self.sample_ms, 1),
            "max_step_ms": round(self.max_wall_ms, 1),
            "slow_steps_ms": self.slow_steps[:20],
        }
