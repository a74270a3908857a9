"""The file MLflow logs as the served model's code ("models from code"): it names the pyfunc.

`bgremoval/` travels with the model (code_paths), so the import works wherever it is served.
"""

import mlflow

from bgremoval.serving import BackgroundRemover

mlflow.models.set_model(BackgroundRemover())
