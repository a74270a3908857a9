"""Batch jobs on engines a user's platform already runs: a catalogue of photos cut out on Spark."""
