"""Facts of the host a run trained on: its CPU, and the code and DVC experiment that made it."""

from __future__ import annotations

import os
import platform
import subprocess

CPU_TAG = "host.cpu"  # the CPU a run trained on (cpu_model())


def cpuinfo_field(key: str) -> str:
    """The first value of `key` in /proc/cpuinfo ("model name", "flags"); "" where there is none."""
    try:
        with open("/proc/cpuinfo") as handle:
            return next((line.split(":", 1)[1].strip() for line in handle if line.split(":", 1)[0].strip() == key), "")
    except OSError:
        return ""


def cpu_model() -> str:
    """The CPU's model name (the machine type where /proc/cpuinfo has none): training seconds
    compare only between runs on the same CPU."""
    return cpuinfo_field("model name") or platform.machine()


def lineage_tags() -> dict[str, str]:
    """What leads a run back to its code and `dvc exp apply`: the DVC experiment name and
    baseline (set by DVC during `dvc exp run`) and the git commit of the working copy."""
    tags = {}
    for variable, tag in (("DVC_EXP_NAME", "dvc.experiment"), ("DVC_EXP_BASELINE_REV", "dvc.baseline_rev")):
        if os.environ.get(variable):
            tags[tag] = os.environ[variable]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        tags["git.commit"] = tags["mlflow.source.git.commit"] = commit
    except (OSError, subprocess.SubprocessError):
        pass  # not a git working copy
    return tags
