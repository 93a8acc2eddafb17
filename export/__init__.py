"""jzi export: the torch side (model, checkpoints, training, ONNX/TensorRT export)."""
