"""The model registry: registering a served model and the champion/challenger gate."""
