"""ONNX: the conversion of a Keras model to the contract's ONNX graph, and its gated fp16 / int8 variants."""
