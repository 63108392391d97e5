"""Working habits: the pre-commit hooks run offline and catch what `make lint` catches."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.conftest import REPO_ROOT


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)


def test_pre_commit_hooks_fail_on_bad_python_shell_and_yaml_and_pass_once_fixed(tmp_path: Path) -> None:
    """A scratch repository with the project's hook config and venv, and one bad file per hook."""
    repo = tmp_path / "repo"
    (repo / "tests").mkdir(parents=True)
    (repo / "yamls").mkdir()
    (repo / "slurm-scripts").mkdir()
    shutil.copy(REPO_ROOT / ".pre-commit-config.yaml", repo)
    shutil.copy(REPO_ROOT / "pyproject.toml", repo)  # ruff's settings
    shutil.copy(REPO_ROOT / "tests" / "check_yamls.py", repo / "tests")
    (repo / "tests" / "__init__.py").write_text("")
    (repo / ".venv").symlink_to(REPO_ROOT / ".venv")
    (repo / "bad.py").write_text("import os\n")  # unused import (ruff F401)
    (repo / "slurm-scripts" / "bad.sbatch").write_text("#!/usr/bin/env bash\necho $1\n")  # SC2086
    (repo / "yamls" / "bad.yaml").write_text("a: ${variables.nope}\n")  # an interpolation that fails
    env = {**os.environ, "PRE_COMMIT_HOME": str(tmp_path / "cache"), "GIT_CONFIG_GLOBAL": "/dev/null"}
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    assert _run([*git, "init", "-q"], repo, env).returncode == 0
    assert _run([*git, "add", "-A"], repo, env).returncode == 0

    failed = _run([str(REPO_ROOT / ".venv" / "bin" / "pre-commit"), "run", "--all-files"], repo, env)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    out = failed.stdout
    assert "F401" in out and "SC2086" in out and "yamls/bad.yaml: Interpolation key 'variables.nope'" in out
    assert "ruff format" in out and "Passed" in out  # the formatter had nothing to change

    (repo / "bad.py").write_text("import os\n\nprint(os.sep)\n")
    (repo / "slurm-scripts" / "bad.sbatch").write_text('#!/usr/bin/env bash\necho "$1"\n')
    (repo / "yamls" / "bad.yaml").write_text("variables:\n  x: 1\na: ${variables.x}\n")
    assert _run([*git, "add", "-A"], repo, env).returncode == 0
    passed = _run([str(REPO_ROOT / ".venv" / "bin" / "pre-commit"), "run", "--all-files"], repo, env)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert passed.stdout.count("Passed") == 4


def _imports(package: Path) -> dict[str, set[str]]:
    """Every module of ``package`` (a folder) and the test_case modules it imports, at any depth."""
    import ast

    found: dict[str, set[str]] = {}
    for path in sorted(package.rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
        found[str(path.relative_to(REPO_ROOT))] = {n for n in names if n.startswith("test_case")}
    return found


def test_training_and_the_report_never_import_each_other() -> None:
    """The rule of the README's "Where things live": both go through the shared modules at the top of
    test_case/ (run header, events, failure lines, gpu_peaks, published_runs)."""
    training = _imports(REPO_ROOT / "test_case" / "training")
    report = _imports(REPO_ROOT / "test_case" / "report")
    assert {m: sorted(i) for m, i in training.items() if any(n.startswith("test_case.report") for n in i)} == {}
    assert {m: sorted(i) for m, i in report.items() if any(n.startswith("test_case.training") for n in i)} == {}
    assert any("test_case.gpu_peaks" in i for i in training.values())  # the check reads real imports


def _module_graph() -> dict[str, set[str]]:
    """Every module of test_case/ and preprocessing/ -> those of them it imports, read from the syntax tree: the
    imports inside functions and under ``TYPE_CHECKING`` count too (a circle hidden in a function is
    still a circle). ``from package import name`` counts as importing the module ``package.name`` when
    there is one, else the package."""
    import ast

    modules = {
        ".".join(p.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__"): p
        for package in ("test_case", "preprocessing")
        for p in sorted((REPO_ROOT / package).rglob("*.py"))
    }
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from . import x, from .x import y
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parent, *([base] if base else [])])
                for alias in node.names:
                    if f"{base}.{alias.name}" in modules:
                        edges.add(f"{base}.{alias.name}")
                    elif base in modules:
                        edges.add(base)
        graph[name] = edges - {name}
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: every strongly connected group of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_circle_anywhere_in_test_case_or_preprocessing() -> None:
    """Layers import downwards only: the node plan and the run config below launch, restarts and the
    preflight; the shared records below training and the report."""
    graph = _module_graph()
    assert "test_case.training.launch" in graph and graph["test_case.launch"] == {"test_case.training.launch"}
    assert _circles(graph) == []


def test_the_circle_finder_finds_a_circle_hidden_in_a_function() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _circles(graph) == [["a", "b", "c"]]
    assert _circles({"a": {"b"}, "b": set()}) == []
