"""The package graph reads downward: nothing under robot_learning/ or sim/ imports ros_nodes."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


def test_core_and_sim_never_import_ros_nodes() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for package in ("robot_learning", "sim")
        for path in sorted((ROOT / package).rglob("*.py"))
        for line, name in _imports(path)
        if name == "ros_nodes" or name.startswith("ros_nodes.")
    ]
    assert not offenders, "\n".join(offenders)


def test_sim_does_not_import_deploy_or_eval() -> None:
    # sim/cli.py is a command-line front end (orchestration on top), so it may use eval
    offenders = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in sorted((ROOT / "sim").rglob("*.py")) if path.name != "cli.py"
        for line, name in _imports(path)
        if name.startswith(("robot_learning.deploy", "robot_learning.eval", "robot_learning.serve"))
    ]
    assert not offenders, "\n".join(offenders)
