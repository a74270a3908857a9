"""Measuring masks: the metrics, scoring a predictor on a split, and the reports built from the scores."""
