"""Pure scheduling logic: request state, KV block accounting, policy and plan building.

Imports no torch, grpc or redis (checked by import-linter)."""
