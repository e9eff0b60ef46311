"""The HTTP and gRPC front door (built in the services issue)."""
