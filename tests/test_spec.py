"""The project's files agree: dvc.yaml, params.yaml, stages' imports, pyproject and conda.yaml."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def _local_imports(path: Path) -> set[str]:
    """Modules of this repo (bgremoval.*, stages.*) that a file imports, as repo-relative paths."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            if name.split(".")[0] in ("bgremoval", "stages"):
                candidate = ROOT / (name.replace(".", "/") + ".py")
                if candidate.exists():
                    found.add(candidate.relative_to(ROOT).as_posix())
    return found


def _closure(start: str) -> set[str]:
    """A file and everything of this repo it imports, transitively (imports inside functions too)."""
    seen, todo = set(), [start]
    while todo:
        f = todo.pop()
        if f not in seen:
            seen.add(f)
            todo.extend(_local_imports(ROOT / f))
    return seen


def test_every_stage_has_a_script_and_a_params_section():
    scripts = {p.stem for p in (ROOT / "stages").glob("*.py")} - {"__init__", "common"}
    assert set(DVC) == scripts
    for name, stage in DVC.items():
        assert stage["cmd"] == f"python -m stages.{name}"
        assert name in PARAMS, f"params.yaml has no section {name!r}"


def test_each_stage_lists_the_code_it_runs_as_deps():
    for name, stage in DVC.items():
        deps = {d for d in stage["deps"] if isinstance(d, str)}
        needed = {f for f in _closure(f"stages/{name}.py") if f != "stages/__init__.py"}
        missing = needed - deps
        assert not missing, f"stage {name} imports {sorted(missing)} but does not list them in deps"


def test_declared_params_exist():
    for name, stage in DVC.items():
        for key in stage.get("params", []):
            node = PARAMS
            for part in key.split("."):
                assert part in node, f"stage {name} declares param {key!r} missing from params.yaml"
                node = node[part]


def test_the_real_data_profile_sets_only_settings_params_yaml_has():
    """benchmarks/real_data_profile.yaml overrides settings; a misspelt key would silently add a new one."""
    profile = yaml.safe_load((ROOT / "benchmarks" / "real_data_profile.yaml").read_text())["set"]
    for key in profile:
        node = PARAMS
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"{key} is not in params.yaml"
            node = node[part]


def test_paths_in_dvc_yaml_are_templated_from_params():
    for name, stage in DVC.items():
        entries = [e if isinstance(e, str) else next(iter(e)) for k in ("deps", "outs", "metrics", "plots") for e in stage.get(k, [])]
        for entry in entries:
            for value in PARAMS["paths"].values():
                assert not entry.startswith(value), f"stage {name}: {entry} is written out; use ${{paths.…}}"


def _requirements(lines):
    return {re.sub(r"\s+", "", line) for line in lines}


def test_conda_env_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())
    pip = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert _requirements(pip) == _requirements(project["dependencies"])
    python = next(d for d in conda["dependencies"] if isinstance(d, str) and d.startswith("python"))
    assert python == "python=3.11" and project["requires-python"].startswith(">=3.11")


def test_mlproject_calls_the_pipeline_without_defaults_of_its_own():
    mlproject = yaml.safe_load((ROOT / "MLproject").read_text())
    assert mlproject["conda_env"] == "conda.yaml"
    for name, entry in mlproject["entry_points"].items():
        assert entry["command"].startswith("dvc repro"), name
        assert "parameters" not in entry, f"entry point {name} declares defaults; they belong in params.yaml"


def test_readme_has_the_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^make \w+", quick, flags=re.M)
    assert commands == ["make pipeline", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_a_stage_ends_bad_input_with_its_message_not_a_traceback(capsys, monkeypatch):
    import pytest

    from stages.common import run

    def main() -> int:
        from bgremoval.losses import make_loss

        make_loss("nope", 1.0)  # a bad setting: the library says which and what the choices are
        return 0

    main.__module__ = "stages.train"
    monkeypatch.delenv("BGREMOVAL_LOG_LEVEL", raising=False)
    with pytest.raises(SystemExit) as exit_:
        run(main)
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and err.startswith("train: train.loss must be one of") and "Traceback" not in err
    monkeypatch.setenv("BGREMOVAL_LOG_LEVEL", "DEBUG")  # ... and the traceback when asked for
    with pytest.raises(ValueError):
        run(main)


def test_an_error_from_a_library_we_call_keeps_its_traceback(monkeypatch):
    import json

    import pytest

    from stages.common import run

    monkeypatch.delenv("BGREMOVAL_LOG_LEVEL", raising=False)
    with pytest.raises(json.JSONDecodeError):  # a bug, not bad input: raised inside json, not by us
        run(lambda: json.loads("{"))
