"""Commands around the pipeline: the real-data study and its comparison, the size sweep, the
hyperparameter search, benchmarks, re-evaluation, seed stability and params.yaml."""
