"""Thin DVC stages: `python -m stages.NAME` reads params.yaml's NAME section and calls the library."""
