"""The front door: OpenAI-compatible HTTP and orca.v1.Generate gRPC (`orca-gateway`)."""
