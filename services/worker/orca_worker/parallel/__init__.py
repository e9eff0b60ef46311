"""Tensor and pipeline parallelism around plain models.

- `topology.py` (pure): ordinal <-> (pipeline, stage, TP rank), pipeline members, layer split.
- `distributed.py`: a pipeline's process group (TCP-store rendezvous at its rank 0; NCCL on
  CUDA with gloo for control messages, gloo on CPU) and the collectives the worker uses.
- `tp.py`: shards a built model on the meta device (q/k/v by heads, KV heads replicated when
  fewer than ranks; MLP column/row; vocabulary-parallel embedding and LM head) and adds the
  all-reduces / the logits all-gather; the loader then reads only each rank's slices.
- `pp.py`: prunes a model to one stage's modules; sends a step's carried tensors onwards.
- `stage.py`: one step of one stage, and the agreement that keeps a pipeline in step.

What each worker answers: every worker of a pipeline gets every StepPlan, in step order,
and answers each with a StepResult of the same step_id. Only the last stage's TP rank 0
fills `tokens`; every other worker answers with timings and no tokens. A step that fails
anywhere (an invalid plan, a refusal of the first stage while draining) fails at every
worker it can reach: the failing worker reports why, its TP peers report PEER_FAILED and
later stages UPSTREAM_FAILED, nothing is committed, and the next plan runs normally. A
worker whose peers are gone or out of step answers "pipeline broken: ..." and exits 1 (the
pipeline is restarted as a whole).
"""
