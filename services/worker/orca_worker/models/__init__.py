"""Model families, one file each, built from shared layers; see registry.py."""
