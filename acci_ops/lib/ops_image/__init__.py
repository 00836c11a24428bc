"""acci_ops's own code-location image: the build context it needs and the check that it works."""
