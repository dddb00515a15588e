"""The DVC stages, each run as `python -m pipeline.stages.<name>` by dvc.yaml: prepare, train, export,
evaluate, deploy."""
