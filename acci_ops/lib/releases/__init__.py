"""Releases: deploy a version by digest, judge it by /health and /metrics, roll it back by itself."""
