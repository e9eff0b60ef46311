"""The scheduler: iteration-level scheduling of every pipeline.

- `core/`: pure scheduling logic (no torch, grpc or redis)
- `topology`: worker ordinal <-> (pipeline, stage, tp rank); complete pipelines
- `executor`: the Executor protocol; `pipeline_executor`: its gRPC implementation for one
  pipeline (every worker gets every plan; up to pp in flight) over `grpc_executor`'s
  per-worker streams
- `discovery/`: the ready workers, from a static list or a Kubernetes pod watch;
  `pipeline_manager`: ready workers -> connected pipelines (and back)
- `config`: SchedulerServiceConfig and the `orca-scheduler` flags; `main`: the entry point
- `service`: wires everything together; `loop`: the iteration loop over all pipelines;
  `serving_pipeline`: one pipeline's scheduler and plans in flight; `placement`: which
  pipeline a request joins; `loop_observer`: metrics and log lines; `metrics`: Prometheus
- Redis in: `request_intake` (consumer group), `control` (cancel / stop), `recovery`
  (resume after a restart), `stream_request` (StreamRequest -> core Request), `inbox`
- Redis out: `publisher` (TokenChunks, XACK), `dead_letters`, `load_reporter`,
  `redis_writer` (ordered, batched writes)
"""
