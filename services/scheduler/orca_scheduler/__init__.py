"""The scheduler: iteration-level scheduling of every pipeline.

- `core/`: pure scheduling logic (no torch, grpc or redis)
- `executor`: the Executor protocol; `grpc_executor`: its gRPC implementation
- `config`: SchedulerServiceConfig and the `orca-scheduler` flags; `main`: the entry point
- `service`: wires everything together; `loop`: the iteration loop; `loop_observer`: its
  metrics and log lines; `metrics`: the Prometheus metrics
- Redis in: `request_intake` (consumer group), `control` (cancel / stop), `recovery`
  (resume after a restart), `stream_request` (StreamRequest -> core Request), `inbox`
- Redis out: `publisher` (TokenChunks, XACK), `dead_letters`, `load_reporter`,
  `redis_writer` (ordered, batched writes)
"""
