"""The process groups of one pipeline, seen from one worker, and the few collectives it uses.

A pipeline is one process group of pp * tp workers that meets at its first worker's TCP
store (`--dist-init-addr host:port`). Tensors move over the device backend (NCCL on CUDA,
gloo on CPU); small control messages (step headers, verdicts, the KV pool size) move over a
gloo group, so that reading them never waits on the GPU. On CPU both are the same groups.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta

import torch
import torch.distributed as dist

from orca_worker.parallel.topology import TopologyError, WorkerPlace

log = logging.getLogger(__name__)

# How long a collective or a receive may wait before the worker gives up on its pipeline.
DEFAULT_TIMEOUT_S = 120.0
# How long the rendezvous waits for every worker of the pipeline to start.
DEFAULT_CONNECT_TIMEOUT_S = 600.0


def parse_init_addr(addr: str, place: WorkerPlace) -> tuple[str, int]:
    """ "host:port" -> (host, port). `{first}` and `{pipeline}` in the host are replaced by
    the pipeline's first ordinal and index (one template serves a whole StatefulSet)."""
    host, sep, port = addr.format(first=place.first_ordinal, pipeline=place.pipeline).rpartition(
        ":"
    )
    if not sep or not host or not port.isdigit():
        raise TopologyError(f"--dist-init-addr must be host:port, got {addr!r}")
    return host.strip("[]"), int(port)


class ParallelComm:
    """This worker's view of its pipeline: TP collectives, stage-to-stage sends, control."""

    def __init__(
        self,
        place: WorkerPlace,
        device: torch.device,
        tp_group: dist.ProcessGroup | None,
        tp_control: dist.ProcessGroup | None,
        control: dist.ProcessGroup | None,
        timeout_s: float,
    ) -> None:
        self.place = place
        self.device = device
        self.timeout = timedelta(seconds=timeout_s)
        self._tp_group = tp_group
        self._tp_control = tp_control
        self._control = control  # None: the default (world) group

    # --- tensor parallel: the data path -------------------------------------------------
    def tp_all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over this stage's TP ranks, in place; returns it."""
        if self._tp_group is not None:
            dist.all_reduce(tensor, group=self._tp_group)
        return tensor

    def tp_all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate every TP rank's `tensor` along the last dimension, in rank order."""
        if self._tp_group is None:
            return tensor
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(self.place.tp_size)]
        dist.all_gather(parts, tensor, group=self._tp_group)
        return torch.cat(parts, dim=-1)

    # --- control: small int64 vectors on the CPU ----------------------------------------
    def tp_gather_control(self, values: list[int]) -> list[list[int]]:
        """Every TP rank's `values`, in rank order (over the control group)."""
        mine = torch.tensor(values, dtype=torch.int64)
        if self._tp_control is None:
            return [values]
        parts = [torch.empty_like(mine) for _ in range(self.place.tp_size)]
        dist.all_gather(parts, mine, group=self._tp_control)
        return [p.tolist() for p in parts]

    def pipeline_min(self, value: int) -> int:
        """The smallest `value` over the whole pipeline (every worker must call it)."""
        tensor = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN, group=self._control)
        return int(tensor.item())

    def send_control(self, values: torch.Tensor, stage: int) -> dist.Work:
        """Start sending an int64 CPU vector to this TP rank's peer at `stage`."""
        return dist.isend(values, self.place.rank_of(stage, self.place.tp_rank), self._control)

    def recv_control(self, values: torch.Tensor, stage: int) -> None:
        """Receive an int64 CPU vector from this TP rank's peer at `stage` (with the timeout)."""
        src = self.place.rank_of(stage, self.place.tp_rank)
        dist.irecv(values, src, self._control).wait(self.timeout)

    # --- pipeline: activations ----------------------------------------------------------
    def send_tensor(self, tensor: torch.Tensor, stage: int) -> dist.Work:
        """Start sending a device tensor to this TP rank's peer at `stage`."""
        return dist.isend(tensor, self.place.rank_of(stage, self.place.tp_rank))

    def recv_tensor(self, tensor: torch.Tensor, stage: int) -> None:
        """Receive a device tensor from this TP rank's peer at `stage`."""
        src = self.place.rank_of(stage, self.place.tp_rank)
        dist.irecv(tensor, src).wait(self.timeout)

    def close(self) -> None:
        """Leave the process group (idempotent)."""
        if dist.is_initialized():
            dist.destroy_process_group()


def init_parallel(
    place: WorkerPlace,
    init_addr: str,
    device: torch.device,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
) -> ParallelComm:
    """Join this worker's pipeline process group (blocks until all its workers have joined)."""
    host, port = parse_init_addr(init_addr, place)
    cuda = device.type == "cuda"
    if cuda:
        # NVLink multicast (NVLS) stays off: it reserves memory and has hung on some hosts.
        os.environ["NCCL_NVLS_ENABLE"] = "0"
        # Each worker sees its own GPU(s): a bare "cuda" means the first visible one.
        torch.cuda.set_device(device.index if device.index is not None else 0)
    log.info(
        "dist_init pipeline=%d rank=%d world=%d store=%s:%d backend=%s",
        place.pipeline,
        place.rank,
        place.world_size,
        host,
        port,
        "nccl" if cuda else "gloo",
    )
    store = dist.TCPStore(
        host,
        port,
        place.world_size,
        is_master=place.rank == 0,
        timeout=timedelta(seconds=connect_timeout_s),
    )
    timeout = timedelta(seconds=timeout_s)
    dist.init_process_group(
        "nccl" if cuda else "gloo",
        store=store,
        rank=place.rank,
        world_size=place.world_size,
        timeout=timeout,
    )
    # Every rank creates every group, in the same order (new_group is collective).
    control = dist.new_group(backend="gloo", timeout=timeout) if cuda else None
    tp_group = tp_control = None
    if place.tp_size > 1:
        for stage in range(place.pp_size):
            ranks = place.stage_ranks(stage)
            group = dist.new_group(ranks, timeout=timeout)
            gloo = dist.new_group(ranks, backend="gloo", timeout=timeout) if cuda else group
            if stage == place.stage:
                tp_group, tp_control = group, gloo
    return ParallelComm(place, device, tp_group, tp_control, control, timeout_s)
