"""The project's files agree: dvc.yaml, params.yaml, the stages' imports, the library's layers, one source
of truth for every default, pyproject and conda.yaml."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
# The library's layers, in the order they may import each other (bgremoval/__init__.py explains them).
LAYERS = [("images", "pictures", "locks", "quiet", "tracking", "weights", "network_io", "keras_layers", "settings"),
          ("data",),
          ("model",), ("training",), ("serving",), ("scoring",), ("export",), ("registry",), ("labelling",), ("batch",),
          ("cli", "demo", "video")]


def _module_file(name: str) -> Path | None:
    """The file of a module of this repo by dotted name (a package's __init__.py), or None."""
    base = ROOT / name.replace(".", "/")
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def local_imports(path: Path, package: str | None = None) -> set[Path]:
    """Every file of this repo (bgremoval/, stages/) that importing `path` runs, by any import form:
    `import a.b`, `from a.b import c` (c a module or a name), `from a import b`, relative imports, and the
    __init__.py of every package on the way. `package`: the file's package (default: from its place in the repo)."""
    if package is None:
        package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(p for p in [*parent, base] if p)
            names.add(base)
            names |= {f"{base}.{a.name}" for a in node.names}
    found = set()
    for name in names:
        if name.split(".")[0] not in ("bgremoval", "stages"):
            continue
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # a.b.c runs a/__init__.py, a/b/__init__.py, a/b/c.py
            f = _module_file(".".join(parts[:i]))
            if f is not None:
                found.add(f)
    return found


def closure(start: Path) -> set[Path]:
    """A file and every file of this repo it imports, transitively (imports inside functions too)."""
    seen, todo = set(), [start]
    while todo:
        f = todo.pop()
        if f not in seen:
            seen.add(f)
            todo.extend(local_imports(f))
    return seen


def test_every_stage_has_a_script_and_a_params_section():
    scripts = {p.stem for p in (ROOT / "stages").glob("*.py")} - {"__init__", "common"}
    assert set(DVC) == scripts
    for name, stage in DVC.items():
        assert stage["cmd"] == f"python -m stages.{name}"
        assert name in PARAMS, f"params.yaml has no section {name!r}"


def test_the_import_resolver_sees_every_form(tmp_path):
    """`from bgremoval import tracking` and `from bgremoval.serving import refine` name modules too."""
    probe = tmp_path / "_probe_imports.py"  # as if in stages/, written outside the source tree
    probe.write_text("from bgremoval import tracking\nfrom bgremoval.serving import refine\nimport bgremoval.data.split\n"
                     "from . import common\n")
    found = {f.relative_to(ROOT).as_posix() for f in local_imports(probe, package="stages")}
    assert {"bgremoval/tracking.py", "bgremoval/serving/refine.py", "bgremoval/data/split.py",
            "bgremoval/serving/__init__.py", "bgremoval/data/__init__.py", "bgremoval/__init__.py",
            "stages/common.py"} <= found


def test_each_stage_lists_the_code_it_runs_as_deps():
    for name, stage in DVC.items():
        deps = [d for d in stage["deps"] if isinstance(d, str) and not d.startswith("$")]
        needed = {f.relative_to(ROOT).as_posix() for f in closure(ROOT / "stages" / f"{name}.py")}
        needed -= {"bgremoval/__init__.py"}  # the version string
        missing = {f for f in needed if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps)}
        assert not missing, f"stage {name} runs {sorted(missing)} but does not list them (or their folder) in deps"


def _layer(path: Path) -> int:
    part = path.relative_to(ROOT / "bgremoval").parts[0].removesuffix(".py")
    return next(i for i, names in enumerate(LAYERS) if part in names)


def test_the_library_imports_run_one_way():
    """A module imports only from its own package or from layers before it (bgremoval/__init__.py)."""
    wrong = []
    for path in (ROOT / "bgremoval").rglob("*.py"):
        if path.name == "__init__.py" and path.parent == ROOT / "bgremoval":
            continue
        for target in local_imports(path):
            if target == ROOT / "bgremoval" / "__init__.py":
                continue
            if _layer(target) > _layer(path):
                wrong.append(f"{path.relative_to(ROOT)} imports {target.relative_to(ROOT)}")
    assert not wrong, "\n".join(wrong)


def reachable(graph: dict, start) -> set:
    """Every node `start` leads to, itself included."""
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return seen


def in_cycles(graph: dict) -> list:
    """The nodes that lead back to themselves."""
    return sorted(n for n in graph if any(n in reachable(graph, m) for m in graph[n]))


def test_the_cycle_finder_finds_a_long_cycle_and_nothing_else():
    assert in_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c"]
    assert in_cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_no_module_imports_itself_through_others():
    """No import cycle among the library's modules: within a layer too, where the layer order allows both ways."""
    top = ROOT / "bgremoval" / "__init__.py"
    graph = {p: local_imports(p) - {p, top} for p in (ROOT / "bgremoval").rglob("*.py") if p != top}
    cyclic = [p.relative_to(ROOT).as_posix() for p in in_cycles(graph)]
    assert not cyclic, f"these modules import themselves through others: {cyclic}"


def crowded_calls(source: str, most: int = 5) -> list[str]:
    """The calls in `source` that pass more than `most` positional arguments, as 'line: callee (n)'."""
    return [f"{node.lineno}: {ast.unparse(node.func)} ({len(node.args)})" for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Call) and len(node.args) > most]


def test_the_crowded_call_finder_counts_positional_arguments_only():
    assert crowded_calls("f(1, 2, 3, 4, 5, 6)\ng(1, 2, 3, 4, 5, x=6)\nh(*a, 1, 2, 3, 4, 5)") == ["1: f (6)", "3: h (6)"]


def test_no_call_passes_more_than_five_positional_arguments():
    """Past five, arguments go by keyword (each stage passes its one typed configuration so): a call reads
    without its callee's signature beside it, and an argument added or moved cannot land in the wrong place."""
    crowded = [f"{p.relative_to(ROOT)}:{c}" for folder in ("stages", "bgremoval")
               for p in sorted((ROOT / folder).rglob("*.py")) for c in crowded_calls(p.read_text())]
    assert not crowded, "\n".join(crowded)


def test_the_registered_model_ships_all_the_code_serving_runs():
    from bgremoval.serving.pyfunc import SHIPPED

    shipped = [ROOT / "bgremoval" / s for s in SHIPPED]
    needed = closure(ROOT / "bgremoval" / "serving" / "served_model.py")
    outside = [f for f in needed if not any(f == s or s in f.parents for s in shipped)]
    assert not outside, f"the served model imports {outside}, which it does not ship"


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


# --- one source of truth ----------------------------------------------------------------------------------

def _leaves(node, key=None):
    """(key, value) of every scalar in params.yaml."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, k)
    elif not isinstance(node, list):
        yield key, node


LEAVES = {}
for _k, _v in _leaves(PARAMS):
    LEAVES.setdefault(_k, set()).add(_v if not isinstance(_v, float) or _v != int(_v) else int(_v))
# Constants that are facts about other software, not knobs (the value happens to equal a setting's).
FACTS = {"REMBG_SIZE"}


def _library_modules():
    import bgremoval

    for info in pkgutil.walk_packages(bgremoval.__path__, "bgremoval."):
        if not info.name.endswith("served_model"):
            yield importlib.import_module(info.name)


def _restates(name: str, value) -> bool:
    """A default named like a params.yaml setting (or containing its name) with a value that setting has."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return False
    lowered = name.lower()
    return any((key == lowered or (len(key) > 3 and key in lowered)) and value in values
               for key, values in LEAVES.items() if isinstance(key, str))


def test_the_restated_default_check_catches_one():
    assert _restates("size", 320) and _restates("max_int8_loss", 0.005) and _restates("output", "cutout")
    assert not _restates("tolerance", 0.008) and not _restates("threshold", 0.5)


def test_no_library_dataclass_declares_a_default():
    """Settings come from params.yaml (or the served model's config): a dataclass default would be a second
    source that drifts."""
    found = []
    for module in _library_modules():
        for name, obj in vars(module).items():
            if dataclasses.is_dataclass(obj) and obj.__module__ == module.__name__:
                found += [f"{module.__name__}.{name}.{f.name}" for f in dataclasses.fields(obj)
                          if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING]
    assert not found, found


def test_no_function_or_constant_restates_a_setting():
    found = []
    for module in _library_modules():
        for name, obj in vars(module).items():
            if name.isupper() and name not in FACTS and _restates(name, obj):
                found.append(f"{module.__name__}.{name} = {obj!r}")
            members = [obj, *vars(obj).values()] if inspect.isclass(obj) else [obj]
            for fn in members:
                if inspect.isfunction(fn) and fn.__module__ == module.__name__:
                    for p in inspect.signature(fn).parameters.values():
                        if p.default is not inspect.Parameter.empty and _restates(p.name, p.default):
                            found.append(f"{module.__name__}.{fn.__qualname__}({p.name}={p.default!r})")
    assert not found, found


def test_the_cli_restates_no_default_and_shares_the_servers_names():
    import argparse

    from bgremoval.cli import build_parser

    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices  # noqa: SLF001
    for command, sub in subs.items():
        for action in sub._actions:  # noqa: SLF001
            assert action.default in (None, False, argparse.SUPPRESS, "params.yaml"), \
                f"bgremoval {command} {action.option_strings}: default {action.default!r} belongs in params.yaml"
    predict = {a.dest for a in subs["predict"]._actions}  # noqa: SLF001
    assert set(PARAMS["serve"]["defaults"]) <= predict


def test_mlproject_declares_no_defaults_of_its_own():
    mlproject = yaml.safe_load((ROOT / "MLproject").read_text())
    assert mlproject["conda_env"] == "conda.yaml"
    for name, entry in mlproject["entry_points"].items():
        assert "parameters" not in entry, f"entry point {name} declares defaults; they belong in params.yaml"


def test_every_stage_is_an_mlproject_entry_point_and_a_row_of_the_readmes_table():
    mlproject = yaml.safe_load((ROOT / "MLproject").read_text())
    assert set(mlproject["entry_points"]) - {"main"} == set(DVC)
    readme = (ROOT / "README.md").read_text()
    assert [name for name in DVC if f"| `{name}` |" not in readme] == []


def _requirements(lines):
    return {re.sub(r"\s+", "", line) for line in lines}


def test_conda_env_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())
    pip = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert _requirements(pip) == _requirements(project["dependencies"])
    python = next(d for d in conda["dependencies"] if isinstance(d, str) and d.startswith("python"))
    assert python == "python=3.11" and project["requires-python"].startswith(">=3.11")


def test_python_env_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "python_env.yaml").read_text())
    assert _requirements(env["dependencies"]) == _requirements(project["dependencies"]) and env["python"] == "3.11"


def test_readme_has_the_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^make \w+", quick, flags=re.M)
    assert commands == ["make pipeline", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_each_stage_reads_exactly_the_params_dvc_shows_for_it(tmp_path, monkeypatch):
    """stages.common reads the stage's params itself (loading DVC's repo costs each stage seconds): what it
    reads must be what `dvc params` says the stage depends on, key for key. DVC reads the repo's dvc.yaml and
    params.yaml from a copy: opening a repo writes its .dvc/tmp/, which must not happen in the source tree."""
    from dvc.repo import Repo

    from stages.common import declared_params

    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc" / "config").write_text("[core]\n    no_scm = true\n    analytics = false\n")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    monkeypatch.chdir(tmp_path)  # DVC names the params file relative to the working directory
    with Repo(str(tmp_path)) as repo:
        for stage in stages:
            shown = repo.params.show(stages=[stage])[""]["data"]["params.yaml"]["data"]
            assert shown, stage  # every stage declares params: an empty answer would compare nothing
            assert declared_params(stage, ROOT) == shown, stage
    with pytest.raises(KeyError):
        declared_params("train", ROOT)["register"]  # not declared by train: not there to read


def test_a_stage_program_exits_with_its_status(tmp_path):
    """Stage programs end without the interpreter's teardown, with the status a normal exit has: 0 when done,
    1 on bad input (its message) and 1 when the stage died of an uncaught exception (its traceback)."""
    def prepare() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "stages.prepare"], cwd=tmp_path, capture_output=True, text=True,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)

    shutil.copy(ROOT / "dvc.yaml", tmp_path)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["prepare"]["sample"] |= {"n_scenes": 3, "frames_per_scene": 1, "min_size": 32, "max_size": 40}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    done = prepare()
    assert done.returncode == 0 and (tmp_path / params["paths"]["manifest"]).exists(), done.stderr
    params["prepare"]["source"] = str(tmp_path / "nowhere")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    bad = prepare()
    assert bad.returncode == 1 and "nowhere/images is not a folder" in bad.stderr and "Traceback" not in bad.stderr
    (tmp_path / "params.yaml").unlink()
    died = prepare()
    assert died.returncode == 1 and "Traceback" in died.stderr and "params.yaml" in died.stderr


def test_a_stage_ends_bad_input_with_its_message_not_a_traceback(capsys, monkeypatch):
    from stages.common import run

    def main() -> int:
        from bgremoval.training.losses import make_loss

        make_loss("nope", 1.0, 0.0, 3)  # a bad setting: the library says which and what the choices are
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

    from stages.common import run

    monkeypatch.delenv("BGREMOVAL_LOG_LEVEL", raising=False)
    with pytest.raises(json.JSONDecodeError):  # a bug, not bad input: raised inside json, not by us
        run(lambda: json.loads("{"))
