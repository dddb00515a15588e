"""The shared core: errors, the contract of the exported models, the config schema, stage paths and
atomic writes, task, attention and faithfulness metrics. It imports nothing else of the package."""
