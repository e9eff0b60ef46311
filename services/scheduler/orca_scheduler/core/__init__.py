"""Pure scheduling logic: request state, KV block accounting, policy and plan building.

Imports no torch, grpc or redis (checked by import-linter).

- `request`: `Request`, its `RequestStatus` and `FinishReason`
- `config`: `SchedulerConfig`
- `block_manager`: `BlockManager`, the paged KV pool with prefix caching
- `waiting_queue`: `WaitingQueue`, admission order (priority, preempted first, arrival)
- `plan_builder`: `PlanBuilder`, decisions -> `StepPlan`, tracking what workers cache
- `scheduler`: `Scheduler`, the iteration-level policy; `outputs`: `SequenceUpdate`
- `errors`: one exception type per failure
"""

from orca_scheduler.core.config import SchedulerConfig
from orca_scheduler.core.errors import (
    DuplicateRequestError,
    InvalidRequestError,
    PromptTooLongError,
    WorkerStepError,
)
from orca_scheduler.core.outputs import SequenceUpdate
from orca_scheduler.core.request import FinishReason, Request, RequestStatus
from orca_scheduler.core.scheduler import Scheduler

__all__ = [
    "DuplicateRequestError",
    "FinishReason",
    "InvalidRequestError",
    "PromptTooLongError",
    "Request",
    "RequestStatus",
    "Scheduler",
    "SchedulerConfig",
    "SequenceUpdate",
    "WorkerStepError",
]
