"""Attention experiment pipeline: prepare -> train -> export -> evaluate (see dvc.yaml).

The pipeline's processes keep third-party libraries to their warnings and errors (TensorFlow's
C++ notices, MLflow's INFO lines), set here before any module imports them; PIPELINE_VERBOSE=1
brings their detail back. A value the environment sets already wins.

TensorFlow writes its start-up notices (absl's "All log messages before absl::InitializeLog()",
oneDNN's "custom operations are on") while its libraries load, before TF_CPP_MIN_LOG_LEVEL
applies. So the first `import tensorflow` of a process runs with file descriptor 2 held in a
temporary file; afterwards every line of it but those notices is written back to stderr.
"""

import importlib.abc
import importlib.machinery
import os
import sys
import tempfile

VERBOSE = os.environ.get("PIPELINE_VERBOSE", "") not in ("", "0")
if not VERBOSE:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # no oneDNN / CPU-feature notices
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")

TENSORFLOW_STARTUP_NOTICES = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "] oneDNN custom operations are on.",
)


class _HeldStderr:
    """File descriptor 2 into a temporary file while inside; on leaving, its lines back to the
    real stderr, less those that contain one of `dropped`."""

    def __init__(self, dropped: tuple[str, ...]):
        self.dropped = dropped

    def __enter__(self):
        sys.stderr.flush()
        self.saved = os.dup(2)
        self.held = tempfile.TemporaryFile()
        os.dup2(self.held.fileno(), 2)

    def __exit__(self, *exc_info):
        sys.stderr.flush()
        os.dup2(self.saved, 2)
        os.close(self.saved)
        self.held.seek(0)
        lines = self.held.read().decode(errors="replace").splitlines(keepends=True)
        self.held.close()
        kept = "".join(line for line in lines if not any(notice in line for notice in self.dropped))
        if kept:
            sys.stderr.write(kept)
            sys.stderr.flush()


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` once, as the other finders do, and loads it inside _HeldStderr."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            loader = spec.loader
            load = loader.exec_module

            def exec_module(module):
                with _HeldStderr(TENSORFLOW_STARTUP_NOTICES):
                    load(module)

            loader.exec_module = exec_module
        return spec


if not VERBOSE and "tensorflow" not in sys.modules:
    sys.meta_path.insert(0, _QuietTensorFlowImport())
