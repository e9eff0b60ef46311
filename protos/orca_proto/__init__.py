"""Everything that crosses a process boundary: generated protobuf code (v1) and, later,
Redis key names and codecs."""
