"""Plain-Python engines behind acci_ops. Nothing in this package imports Dagster.

They are the parts that do the work (dump pipeline, manifest, retention planner, object
store, command runner) so they can be read, tested and run from a shell on their own.
"""
