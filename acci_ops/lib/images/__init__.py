"""Image builds: every ACCI Framework version built reproducibly for each platform, checked, pushed by digest.

Plain Python, no Dagster: source (tags, clean checkout) -> build (buildah, OCI index in a layout
directory) -> checks (ELF architectures, smoke, policy, scan) -> registry (immutable tags, push by
digest). ``pipeline.build_version`` orchestrates; ``gate.standard_gate`` is the checks and artifacts
every version gets; ``acci_ops/defs/images`` wires them into Dagster.
"""
