"""Plain-Python engines behind acci_ops. Nothing in this package imports Dagster.

They are the parts that do the work (dump pipeline, manifest, retention, object store, restore,
validation, DR procedures, command runner) so they can be read, tested and run from a shell on
their own. One folder per capability, and imports only go downward (no cycles)::

    core  <-  storage, postgres  <-  backup  <-  validation  <-  dr
                    postgres     <-  platform  <-  dr

Nothing here imports ``acci_ops.defs``, ``acci_ops.dev``, ``acci_ops.settings`` or the tests;
acci_ops_tests/lib/test_layering.py checks all of it.
"""
