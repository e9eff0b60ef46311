"""Generated code for the orca.v1 protos (scripts/gen_protos.py); do not edit by hand."""
