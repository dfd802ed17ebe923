"""The layering rule of ARCHITECTURE.md, enforced by walking every module's imports (AST).

| package  | may import (of ours)          |
| dissect  | nothing                       |
| capture  | dissect                       |
| hub      | dissect                       |
| tui      | dissect                       |
| manifests | nothing (YAML and the Dockerfile) |
| podshark | all (lazily, inside commands) |

`dissect` is also kept free of I/O-heavy third-party packages (sockets, asyncio, DuckDB, Textual,
aiohttp, kubernetes) so it stays sans-IO and cheap to import everywhere.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
OURS = {"dissect", "capture", "hub", "tui", "podshark", "manifests"}
ALLOWED = {
    "dissect": set(),
    "capture": {"dissect"},
    "hub": {"dissect"},
    "tui": {"dissect"},
    "manifests": set(),
    "podshark": OURS,
}
DISSECT_FORBIDDEN = {"socket", "asyncio", "duckdb", "textual", "aiohttp", "kubernetes", "selectors"}
# what podshark/__init__.py and the cli may import at module level: keeps `--help` fast and the hub
# image free of Textual (subcommands import their stage inside the function that runs it)
TOP_LEVEL_LIGHT = {"dissect", "capture", "hub", "tui"}


def imports(path: Path, top_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def modules(pkg: str) -> list[Path]:
    return sorted((REPO / pkg).rglob("*.py"))


@pytest.mark.parametrize("pkg", sorted(ALLOWED))
def test_package_imports_only_what_the_layering_allows(pkg: str) -> None:
    files = modules(pkg)
    assert files, f"package {pkg}/ has no modules"
    bad = []
    for f in files:
        ours = imports(f) & OURS - {pkg}
        if not ours <= ALLOWED[pkg]:
            bad.append(f"{f.relative_to(REPO)} imports {sorted(ours - ALLOWED[pkg])}")
    assert not bad, "layering violated:\n" + "\n".join(bad)


def test_dissect_stays_sans_io() -> None:
    bad = [f"{f.relative_to(REPO)}: {sorted(imports(f) & DISSECT_FORBIDDEN)}" for f in modules("dissect")]
    bad = [b for b in bad if not b.endswith("[]")]
    assert not bad, "dissect/ must not import I/O frameworks:\n" + "\n".join(bad)


def test_front_door_imports_stages_lazily() -> None:
    for name in ("__init__.py", "cli.py"):
        eager = imports(REPO / "podshark" / name, top_level_only=True) & TOP_LEVEL_LIGHT
        assert not eager, (
            f"podshark/{name} imports {sorted(eager)} at module level; import inside the command"
        )


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    """The walk must find imports nested in functions and `from x.y import z` forms."""
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from hub.store import Store\n    import tui.app\n")
    assert imports(f) == {"hub", "tui"}
    assert imports(f, top_level_only=True) == set()
