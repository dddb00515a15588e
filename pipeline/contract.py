"""The names the exported models promise: tests and users bind inputs and outputs by them."""

INPUT_NAME = "x"
OUTPUT_NAMES = ("prediction", "attention")
BATCH_DIM = "batch"
TIME_DIM = "time"
OPSET_MAX = 18  # tf2onnx 1.17 rejects opset 19
