"""dvc.yaml's code deps equal what each stage imports (tests/stage_deps.py)."""

from __future__ import annotations

import copy

import pytest

from tests.stage_deps import deps_problems, import_closure, load_dvc_yaml, stage_modules


def test_every_stage_lists_exactly_the_code_it_imports():
    assert deps_problems(load_dvc_yaml()) == []


def test_the_closure_follows_imports_through_other_modules_and_inside_functions():
    closure = import_closure("pipeline.stages.export")
    assert "pipeline/models/layers.py" in closure  # export -> models -> layers (custom layers)
    assert "pipeline/data/synthetic.py" in closure  # export -> prepare -> data -> synthetic
    assert "pipeline/core/errors.py" in closure and "pipeline/__init__.py" in closure
    assert "pipeline/serving/serve.py" not in closure and "pipeline/stages/train.py" not in closure


@pytest.mark.parametrize(
    "stage, removed",
    [
        ("export", "pipeline/models/layers.py"),
        ("train", "pipeline/core/config.py"),
        ("evaluate", "pipeline/tracking/__init__.py"),
    ],
)
def test_a_stage_missing_a_module_it_imports_is_reported(stage, removed):
    dvc_yaml = copy.deepcopy(load_dvc_yaml())
    dvc_yaml["stages"][stage]["deps"].remove(removed)
    problems = deps_problems(dvc_yaml)
    assert len(problems) == 1 and problems[0].startswith(f"stage {stage}: deps miss ")
    assert removed in problems[0]


def test_a_stage_listing_code_it_does_not_import_is_reported():
    dvc_yaml = copy.deepcopy(load_dvc_yaml())
    dvc_yaml["stages"]["deploy"]["deps"].append("pipeline/serving/serve.py")
    assert deps_problems(dvc_yaml) == [
        "stage deploy: deps list ['pipeline/serving/serve.py'], which pipeline.stages.deploy does not import"
    ]


def test_every_stage_runs_a_module_of_the_package():
    assert set(stage_modules(load_dvc_yaml())) == set(load_dvc_yaml()["stages"])
