"""Dagster wiring only: assets, checks, jobs, schedules, sensors and the resources they use."""
