"""The package's shape, checked from its source: layers that point down, no import cycles, no
module reaching into another's private names, every third-party import declared, modules of a
readable size, and `tunesmith --version`."""
import ast
import os
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("orchestrator", "trainables", "search_spaces", "cluster")
LOWER = ("trainables", "search_spaces", "cluster")
MAX_LINES = 400


def _modules():
    """{module name: (path, parsed tree)} for every module of the package."""
    out = {}
    for pkg in PACKAGES:
        for folder, _, files in os.walk(os.path.join(ROOT, pkg)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                    mod = "tunesmith." + rel.removesuffix(".__init__")
                    with open(path, encoding="utf-8") as fh:
                        out[mod] = (path, ast.parse(fh.read()))
    return out


MODULES = _modules()


def _imports(tree):
    """(module, names) of every import, at the top or inside functions."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, ()
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module, tuple(a.name for a in node.names)


def _internal_edges():
    graph = {}
    for mod, (_, tree) in MODULES.items():
        deps = set()
        for target, names in _imports(tree):
            for cand in [target, *(f"{target}.{n}" for n in names)]:
                if cand in MODULES and cand != mod and not mod.startswith(cand + "."):
                    if cand.count(".") == 1 and cand.split(".")[1] in PACKAGES:
                        continue   # a package's empty __init__: importing a sibling through it
                    deps.add(cand)
        graph[mod] = deps
    return graph


def test_the_checks_see_the_package():
    assert {"tunesmith.orchestrator.ledger", "tunesmith.orchestrator.smith.policy",
            "tunesmith.trainables.trainer", "tunesmith.cluster.storage"} <= set(MODULES)


def test_lower_layers_import_nothing_from_orchestrator():
    up = [(mod, target) for mod, (_, tree) in MODULES.items() if mod.split(".")[1] in LOWER
          for target, _ in _imports(tree) if target.startswith("tunesmith.orchestrator")]
    assert up == []


def test_no_import_cycles():
    graph = _internal_edges()
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2
    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert cycles == []


def test_no_module_imports_another_modules_private_names():
    reached = [(mod, target, name) for mod, (_, tree) in MODULES.items() for target, names in _imports(tree)
               if target.startswith("tunesmith.") and target != mod
               for name in names if name.startswith("_")]
    assert reached == []


def test_no_package_file_passes_the_size_limit():
    long = {mod: n for mod, (path, _) in MODULES.items()
            if (n := sum(1 for _ in open(path, encoding="utf-8"))) > MAX_LINES}
    assert long == {}


def _declared():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        project = tomllib.load(fh)["project"]
    reqs = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}


def test_every_third_party_import_is_declared():
    dists = packages_distributions()
    stdlib = set(sys.stdlib_module_names)
    declared = _declared()
    missing = {}
    for mod, (_, tree) in MODULES.items():
        for target, _ in _imports(tree):
            top = target.split(".")[0]
            if top in stdlib or top == "tunesmith" or top == "__future__":
                continue
            names = {d.lower().replace("_", "-") for d in dists.get(top, [])}
            assert names, f"{mod} imports {top}, which no installed distribution provides"
            if not names & declared:
                missing.setdefault(top, set()).add(mod)
    assert missing == {}


def test_version_names_tunesmith_ray_and_torch():
    out = subprocess.run([sys.executable, "-m", "tunesmith.orchestrator", "--version"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert re.fullmatch(r"tunesmith \S+ \(ray 2\.\d+\.\d+, torch 2\.\d+\S*\)\n", out.stdout), out.stdout


def test_every_package_folder_is_installed():
    """A subpackage missing from pyproject's list is missing from the wheel (tests/test_wheel.py
    finds it only after a build)."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        listed = set(tomllib.load(fh)["tool"]["setuptools"]["packages"])
    folders = {"tunesmith." + os.path.relpath(folder, ROOT).replace(os.sep, ".")
               for pkg in PACKAGES for folder, _, files in os.walk(os.path.join(ROOT, pkg))
               if "__init__.py" in files}
    assert folders == listed
