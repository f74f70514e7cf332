"""Shared helpers for the tests: processes, stacks, task modules."""
