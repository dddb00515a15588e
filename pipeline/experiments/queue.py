"""The DVC experiment queue the study and the sweep run in: `dvc` commands, and waiting until the
queue is empty."""

from __future__ import annotations

import re
import shlex
import subprocess
import time

from pipeline.core.errors import StageFailed


def dvc(*args: str) -> str:
    """The output of `dvc ARGS`; a StageFailed with its error where it fails."""
    result = subprocess.run(["dvc", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise StageFailed(f"`dvc {shlex.join(args)}` failed: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def queue_state(status: str) -> tuple[int, int]:
    """(experiments queued, workers active) from the text of `dvc queue status`."""
    queued = sum(1 for line in status.splitlines() if line.rstrip().endswith("Queued"))
    workers = re.search(r"Worker status: (\d+) active", status)
    return queued, int(workers.group(1)) if workers else 0


def wait_for_queue(poll_seconds: float = 30) -> str:
    """Block until nothing is queued and no worker is busy; its final `dvc queue status`. A worker
    that stopped while experiments wait is started again (DVC's worker can stop after a task when
    it has seen a shutdown request); an entry left "Running" by a killed worker does not block."""
    while True:
        status = dvc("queue", "status")
        queued, active = queue_state(status)
        if not active:
            if not queued:
                return status
            dvc("queue", "start", "-j", "1")
        time.sleep(poll_seconds)
