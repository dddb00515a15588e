"""The names the exported models promise: tests and users bind inputs and outputs by them."""

INPUT_NAME = "x"
OUTPUT_NAMES = ("prediction", "attention")
BATCH_DIM = "batch"
TIME_DIM = "time"
OPSET_MAX = 18  # tf2onnx 1.17 rejects opset 19
PAD_VALUE = -1.0  # padded steps of variable-length sequences hold this on every feature
