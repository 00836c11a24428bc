"""acci_ops: the operations control plane of ACCI Framework, a Dagster code location (entry point:
``acci_ops.definitions``). A regular package, so an installed copy is never merged with another
``acci_ops`` directory on ``sys.path`` (a namespace package would be)."""
