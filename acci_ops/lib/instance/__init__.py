"""The Dagster instance acci_ops runs in (``dagster.yaml``): checks of a production configuration."""
