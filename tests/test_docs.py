"""The documents say what is true: the README's example, its table of modules, and the commands
of docs/guarantees.md, each of which must select tests that exist."""

from __future__ import annotations

import ast
import hashlib
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
from _pytest.mark.expression import Expression  # pytest's own -k language

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "sharedcache"


def test_readme_example_checksum_is_that_of_the_shipped_archive() -> None:
    readme = (ROOT / "README.md").read_text()
    url = re.search(r"^url=\S*/(\S+)$", readme, re.MULTILINE)
    md5 = re.search(r"^md5=([0-9a-f]{32})$", readme, re.MULTILINE)
    assert url and md5
    assert hashlib.md5((ROOT / "examples" / url[1]).read_bytes()).hexdigest() == md5[1]


def test_readme_module_table_matches_the_tree() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Layout of the code"):]
    first_cells = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    named = {name for cell in first_cells for name in re.findall(r"`([a-z_/]+)`", cell)}
    modules = {str(path.relative_to(PACKAGE).with_suffix("")) for path in PACKAGE.rglob("*.py")
               if path.name not in ("__init__.py", "__main__.py")}
    packages = {f"{path.parent.relative_to(PACKAGE)}/" for path in PACKAGE.rglob("__init__.py")} - {"./"}
    assert modules | packages == named, (sorted((modules | packages) - named), sorted(named - modules - packages))


def test_contributing_names_the_modules_the_warm_path_test_allows() -> None:
    # The rule of the warm path is made in two places, the list a contributor reads and the set
    # the test asserts: a module added to one only (it was, `modes`) makes the other false.
    rule = (ROOT / "CONTRIBUTING.md").read_text()
    rule = rule[rule.index("imports exactly these modules of ours"):rule.index("The test `tests/test_repository_cli.py")]
    named = {f"sharedcache.{name}" if name != "sharedcache" else name for name in re.findall(r"`([a-z_.]+)`", rule)}
    tree = ast.parse((ROOT / "tests" / "test_repository_cli.py").read_text())
    allowed = next(ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                   and any(isinstance(target, ast.Name) and target.id == "WARM_MODULES" for target in node.targets))
    assert named == allowed, (sorted(named - allowed), sorted(allowed - named))


def test_readme_python_examples_pass_mypy_strict_in_a_user_s_program(tmp_path: Path) -> None:
    """A user's program that imports as the README shows type-checks under mypy --strict: the
    package ships py.typed, and its lazy exports are re-exported explicitly."""
    import sharedcache

    assert sorted(sharedcache.__all__) == sorted(sharedcache._EXPORTS)
    readme = (ROOT / "README.md").read_text()
    examples = re.findall(r"^```python\n(.*?)^```$", readme, re.MULTILINE | re.DOTALL)
    assert len(examples) >= 2 and any("FsCache" in example for example in examples)
    for number, example in enumerate(examples):
        (tmp_path / f"example_{number}.py").write_text(example)
    # Outside the checkout, so that only the installed package (and its py.typed) is seen.
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"),
         *sorted(path.name for path in tmp_path.glob("example_*.py"))],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    if "No module named mypy" in checked.stderr:
        pytest.skip("mypy is not installed (the lint extra: tools/test.sh installs it)")
    assert checked.returncode == 0, checked.stdout + checked.stderr


@cache
def _collected() -> list[str]:
    result = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                             str(ROOT / "tests")], capture_output=True, text=True, timeout=120, cwd=ROOT)
    return [line for line in result.stdout.splitlines() if "::" in line]


def _arguments(command: str) -> tuple[list[str], str | None]:
    """The paths a pytest command names, and its ``-k`` expression if it has one."""
    words = shlex.split(command)
    words = words[words.index("pytest") + 1:]
    paths, keyword = [], None
    while words:
        word = words.pop(0)
        if word == "-k":
            keyword = words.pop(0)
        elif not word.startswith("-"):
            paths.append(word)
    return paths, keyword


def _matching(paths: list[str], keyword: str | None, collected: list[str]) -> list[str]:
    chosen = [test for test in collected
              if any(test == path or test.startswith(path.rstrip("/") + ("::" if ".py" in path else "/"))
                     or test.startswith(path + "[") for path in paths)]
    if keyword is not None:
        expression = Expression.compile(keyword)
        chosen = [test for test in chosen
                  if expression.evaluate(lambda name, test=test: any(
                      name.lower() in part.lower() for part in re.split(r"::|/|\.py", test)))]
    return chosen


def _selected(command: str, collected: list[str]) -> list[str]:
    return _matching(*_arguments(command), collected)


def _terms_selecting_nothing(command: str, collected: list[str]) -> list[str]:
    """The terms of the command's ``-k`` disjunction that select no test of its paths: a
    misspelled one leaves its tests out, unnoticed while the other terms select some."""
    paths, keyword = _arguments(command)
    if keyword is None or not re.fullmatch(r"[\w\[\]-]+( or [\w\[\]-]+)*", keyword):
        return []  # (no terms to tell apart: the whole expression must select tests, above)
    return [term for term in keyword.split(" or ") if not _matching(paths, term, collected)]


def _guarantees_commands() -> list[str]:
    guarantees = (ROOT / "docs" / "guarantees.md").read_text()
    return [command for command in re.findall(r"`([^`]*pytest[^`]*)`", guarantees) if "tests/" in command]


def test_every_command_of_the_guarantees_selects_tests() -> None:
    commands = _guarantees_commands()
    assert len(commands) >= 20
    collected = _collected()
    assert collected
    empty = [command for command in commands if not _selected(command, collected)]
    assert not empty, f"these commands select no test: {empty}"


def test_every_term_of_the_guarantees_keywords_selects_tests() -> None:
    collected = _collected()
    unmatched = {command: terms for command in _guarantees_commands()
                 if (terms := _terms_selecting_nothing(command, collected))}
    assert not unmatched, f"these terms select no test of their command's files: {unmatched}"


def test_a_misspelled_term_of_a_keyword_is_caught() -> None:
    command = "pytest tests/test_fuzz.py -k 'fuzz or no_such_tset'"
    assert _terms_selecting_nothing(command, _collected()) == ["no_such_tset"]


@pytest.mark.parametrize("command", ["pytest tests/test_fuzz.py -k no_such_test_anywhere",
                                     "pytest tests/test_no_such_file.py"])
def test_a_command_that_selects_nothing_is_caught(command: str) -> None:
    assert _selected(command, _collected()) == []
