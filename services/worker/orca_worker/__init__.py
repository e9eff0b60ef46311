"""The worker: loads a model shard, owns the KV pool, executes StepPlans, samples."""
