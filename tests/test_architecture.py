"""The layout's rule, checked: imports run downwards only (CONTRIBUTING.md, "The architecture").

Every import of every module counts, including those inside functions (a lazy import upwards is
still an arrow upwards) and those made for the type checker only.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "sharedcache"
SHARED = {"errors", "loader_errors", "sizes", "progress", "lean", "mounts", "modes", "__init__", "__main__"}
# What each sub-system may import, besides itself and the shared modules.
ALLOWED = {
    "cli": {"repository", "loaders", "engine", "config"},
    "repository": {"loaders", "engine", "config"},
    "loaders": {"config"},
    "engine": {"config"},
    "config": set(),
}


def _part(module: str) -> str:
    """The sub-system of a module path relative to the package (``engine/fscache`` -> ``engine``)."""
    return module.split("/")[0].removesuffix(".py")


def _imports(path: Path) -> set[str]:
    """The sub-systems (or shared modules) of ours that the file imports."""
    here = path.relative_to(PACKAGE).parent.parts
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                parts = [*base, *(node.module or "").split(".")] if node.module else list(base)
                parts = [p for p in parts if p]
                # "from .. import x": x of that package (the root's names are its __init__'s).
                targets = [parts] if node.module else [[*parts, alias.name] if parts else ["__init__"]
                                                       for alias in node.names]
            elif (node.module or "").startswith("sharedcache"):
                targets = [node.module.split(".")[1:] or [alias.name for alias in node.names][:1]]
            else:
                continue
            found.update(target[0] for target in targets if target)
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[1] for alias in node.names
                         if alias.name.startswith("sharedcache."))
    return found


def test_imports_run_downwards_only() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = str(path.relative_to(PACKAGE))
        part = _part(module)
        allowed = SHARED if part in SHARED else ALLOWED[part] | SHARED | {part}
        if module in ("__init__.py", "__main__.py"):
            continue  # the package's entry points name what they export, lazily
        wrong += [f"{module} imports {target}" for target in sorted(_imports(path) - allowed)]
    assert not wrong, wrong


def test_the_checker_sees_arrows() -> None:
    imports = _imports(PACKAGE / "cli" / "commands.py")
    assert {"repository", "config", "engine", "errors"} <= imports, imports
    assert "errors" in _imports(PACKAGE / "engine" / "locks.py")
