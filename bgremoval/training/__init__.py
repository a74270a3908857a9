"""Training: losses, the fit loop with resumable epochs, weight blending, hyperparameter search."""
