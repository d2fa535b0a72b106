"""The packages' import boundaries: an agent runs without the router, the contract without both."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_packages(package: str) -> dict[str, set[str]]:
    """Top-level packages each module of ``package`` imports, by module path."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("node_agent", {"router", "bench"}),
        ("node_protocol", {"router", "node_agent", "bench"}),
        ("router", {"node_agent", "bench"}),
    ],
)
def test_package_never_imports_the_packages_above_it(package: str, forbidden: set[str]) -> None:
    """No module of a package imports a package it must run without."""
    offenders = {
        module: sorted(names & forbidden)
        for module, names in imported_packages(package).items()
        if names & forbidden
    }
    assert offenders == {}


def test_the_scan_sees_imports() -> None:
    """The scan finds real imports, so an empty answer above means something."""
    assert "node_protocol" in set().union(*imported_packages("node_agent").values())
