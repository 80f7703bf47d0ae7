"""Shared utilities of the suite: tasks, datasets, buffers, evaluation, logging (used by >= 2 algorithms)."""
