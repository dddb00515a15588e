"""Print the config that conf/ composes (with Hydra overrides), validated; or write it to params.yaml.

python -m pipeline.tools.params                          # the composed defaults
python -m pipeline.tools.params experiment=dense_attention
python -m pipeline.tools.params --write-params           # rewrite params.yaml (make params)
"""

from __future__ import annotations

import argparse

import yaml

from pipeline.core.config import PARAMS_FILE, compose_defaults, validate
from pipeline.core.errors import run_command


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-params", action="store_true", help="rewrite params.yaml")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=dense_attention")
    args = parser.parse_args()
    composed = compose_defaults(overrides=args.overrides)
    validate(composed, f"conf/ with {' '.join(args.overrides)}" if args.overrides else "conf/")
    text = yaml.safe_dump(composed, sort_keys=False)
    if args.write_params:
        PARAMS_FILE.write_text(text, encoding="utf-8")
    else:
        print(text, end="")


if __name__ == "__main__":
    run_command(main)
