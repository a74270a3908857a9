"""The served model: its runtime (onnxruntime or Keras), refinement, request handling and MLflow pyfunc.

This package and bgremoval/images.py are all the registered model ships; nothing here imports TensorFlow
unless the served file is a .keras model."""
