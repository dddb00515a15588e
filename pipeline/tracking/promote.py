"""Move the `champion` alias of a registered model to its best version by a metric.

    python -m pipeline.tracking.promote                                    # params.yaml's registered model
    python -m pipeline.tracking.promote --name attention-find_max --metric test/mae --lower-is-better
    python -m pipeline.serving.serve --model models:/attention-planted_step@champion

Every version is a run's ONNX model (registered by the evaluate stage, alias `candidate`); the
metric is read from the version's run. Default metric: test/accuracy, or test/mae (lower is
better) for regression runs. No TensorFlow import.
"""

from __future__ import annotations

import argparse
import sys

import mlflow
from mlflow.tracking import MlflowClient

from pipeline.core.config import load_config
from pipeline.core.errors import PipelineError, run_command
from pipeline.tracking import CHAMPION, tracking_uri


def best_version(name: str, metric: str | None = None, lower_is_better: bool = False) -> tuple[str, str, float]:
    """(version, metric, value) of the best version of `name` whose run has the metric; of
    equally good versions, the newest."""
    client = MlflowClient()
    versions = client.search_model_versions(f"name = '{name}'")
    if not versions:
        raise PipelineError(f"no registered model {name!r} in {mlflow.get_tracking_uri()}")
    scored = []
    for version in versions:
        metrics = client.get_run(version.run_id).data.metrics if version.run_id else {}
        chosen = metric or ("test/accuracy" if "test/accuracy" in metrics else "test/mae")
        if chosen in metrics:
            scored.append((version.version, chosen, metrics[chosen]))
    if not scored:
        raise PipelineError(f"no version of {name!r} has the metric {metric or 'test/accuracy'}")
    lower = lower_is_better or (metric is None and scored[0][1] == "test/mae")
    if lower:
        return min(scored, key=lambda s: (s[2], -int(s[0])))
    return max(scored, key=lambda s: (s[2], int(s[0])))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", help="registered model (default: mlflow.registered_model)")
    parser.add_argument("--metric", help="default: test/accuracy, or test/mae for regression")
    parser.add_argument("--lower-is-better", action="store_true")
    parser.add_argument("--tracking-uri", help="default: as the pipeline's stages resolve it")
    args = parser.parse_args(argv)
    cfg = None if (args.name and args.tracking_uri) else load_config()
    mlflow.set_tracking_uri(args.tracking_uri or tracking_uri(cfg.mlflow))
    name = args.name or cfg.mlflow.registered_model
    version, metric, value = best_version(name, args.metric, args.lower_is_better)
    MlflowClient().set_registered_model_alias(name, CHAMPION, version)
    print(f"{name}@{CHAMPION} -> version {version} ({metric} = {value:.6g})", file=sys.stdout)


if __name__ == "__main__":
    run_command(main)
