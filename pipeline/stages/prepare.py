"""Stage `prepare`: generate the task's samples (or read the TRAIN/TEST files of a real data
set), split them, write npz splits and meta.json.

    python -m pipeline.stages.prepare        # reads params.yaml: seed, data

Outputs: data/prepared/{train,val,test}.npz with x, y, target_positions; data/prepared/meta.json
(shapes, task type, padding and, for data from files, the class labels and the normalization
fitted on the training split). NumPy only.
"""

from __future__ import annotations

from pipeline.core import stage
from pipeline.core.config import load_config
from pipeline.core.errors import run_command
from pipeline.data.splits import prepared, save_splits


def main() -> None:
    cfg = load_config()
    splits, meta = prepared(cfg)
    save_splits(splits)
    stage.write_json(stage.META_FILE, meta)
    print(f"prepared {cfg.data.name}: " + ", ".join(f"{k}={len(v)}" for k, v in splits.items()))


if __name__ == "__main__":
    run_command(main)
