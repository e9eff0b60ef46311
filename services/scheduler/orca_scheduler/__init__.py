"""The scheduler: iteration-level scheduling of every pipeline."""
