"""The errors every command reports as one `error:` line with exit code 2, and the runner that does it.

This module imports nothing of the package: a module run as `__main__` (python -m pipeline.tools.params)
is loaded a second time under its own name, so an exception class defined there would be two
classes, and the runner would miss the one the code raises.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class PipelineError(Exception):
    """Bad input to a command (a config, a data file, a model, a request); the message names the
    problem and the place. Earlier outputs stay as they were."""


class ConfigError(PipelineError):
    """A params file that cannot be used; the message names the file and the key."""


class StageFailed(PipelineError):
    """A stage's own check failed (e.g. the ONNX parity gate); earlier outputs stay as they were."""


def run_command(main: Callable[[], None]) -> None:
    """Run a command's main(); a PipelineError exits 2 with one `error:` line on stderr."""
    try:
        main()
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
