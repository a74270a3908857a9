"""From a trained model to the served one: ONNX export, int8 quantisation, and the val-chosen set-up."""
