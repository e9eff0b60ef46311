"""Orca's benchmarks: the synthetic trace, the model shapes, the HF peers and the runners.

Run from the repository root: `python bench/run.py --help` (see bench/README.md).
"""
