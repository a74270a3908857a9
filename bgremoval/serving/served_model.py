"""The file MLflow logs as the served model's code ("models from code"): it names the pyfunc.

The code serving needs travels with the model (code_paths), so the import works wherever it is served.
"""

import mlflow

from bgremoval.serving.pyfunc import BackgroundRemover

mlflow.models.set_model(BackgroundRemover())
