"""Attention experiment pipeline: prepare -> train -> export -> evaluate (see dvc.yaml).

The pipeline's processes keep third-party libraries to their warnings and errors (TensorFlow's
C++ notices, MLflow's INFO lines), set here before any module imports them; PIPELINE_VERBOSE=1
brings their detail back. A value the environment sets already wins.
"""

import os

VERBOSE = os.environ.get("PIPELINE_VERBOSE", "") not in ("", "0")
if not VERBOSE:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # no oneDNN / CPU-feature notices
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
