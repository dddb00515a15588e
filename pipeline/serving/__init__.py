"""Serving the exported ONNX models: the runtime (no TensorFlow), the Open Inference Protocol records,
the HTTP service and the command line."""
