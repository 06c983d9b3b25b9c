"""Placing workers: local processes (default) and Ray actors for many machines."""
