"""Per-phase step timings that add no host sync of their own."""

from __future__ import annotations

import time

import torch


class StepTimer:
    """Marks phase boundaries; `elapsed_ms()` is read after the step's one sync (the sampled
    tokens' copy to the host). On CUDA, events time the GPU's work, not the launch."""

    def __init__(self, device: torch.device) -> None:
        self._cuda = device.type == "cuda"
        self._marks: list = []
        self.mark()

    def mark(self) -> None:
        """End the current phase and start the next."""
        if self._cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._marks.append(event)
        else:
            self._marks.append(time.perf_counter())

    def elapsed_ms(self) -> list[float]:
        """Milliseconds of each phase, in order."""
        pairs = zip(self._marks, self._marks[1:], strict=False)
        if self._cuda:
            self._marks[-1].synchronize()
            return [a.elapsed_time(b) for a, b in pairs]
        return [(b - a) * 1000.0 for a, b in pairs]
