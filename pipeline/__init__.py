"""Attention experiment pipeline: prepare -> train -> export -> evaluate (see dvc.yaml)."""
