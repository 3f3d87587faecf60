"""The README's lists and counts agree with the tree: every package module
and every tool has its name in the README's table, no name there is gone
from the tree, and the test counts are the sources' (in the spirit of
`make_prototxt.py --check`). A failure names the README line to change."""

from __future__ import annotations

import ast
import re
from collections import Counter
from pathlib import Path

from liftedstruct.caffebuild.source import LAYERS_DIR, OVERLAY
from liftedstruct.paths import REPO_ROOT

README = REPO_ROOT / "README.md"
PACKAGE = REPO_ROOT / "liftedstruct"
TOOLS = REPO_ROOT / "tools"
GTESTS = LAYERS_DIR / "src" / "caffe" / "test"
GTEST_CASE = re.compile(r"^\s*(?:TYPED_TEST|TEST_F|TEST_P|TEST)\s*\(", re.M)


def readme_row(title: str) -> tuple[int, str]:
    """(line number, text) of the README table row whose first cell is title."""
    for number, line in enumerate(README.read_text().splitlines(), start=1):
        if line.startswith(f"| {title} |"):
            return number, line
    raise AssertionError(f"README.md has no table row '| {title} |'")


def named(line: str) -> list[str]:
    """The `backticked` names of a row, past its first cell."""
    return re.findall(r"`([^`]+)`", line.split("|", 2)[2])


def differences(where: str, listed: Counter, actual: Counter) -> str:
    missing, stale = actual - listed, listed - actual
    parts = []
    if missing:
        parts.append("add " + ", ".join(f"`{n}`" for n in sorted(missing)))
    if stale:
        parts.append("remove " + ", ".join(f"`{n}`" for n in sorted(stale)))
    return f"{where}: " + "; ".join(parts)


def package_names() -> Counter:
    """Each subpackage as `name/`, each module by file name, __init__ aside."""
    names: Counter = Counter()
    for path in PACKAGE.rglob("*.py"):
        if path.name != "__init__.py":
            names[path.name] += 1
    for init in PACKAGE.glob("*/__init__.py"):
        names[f"{init.parent.name}/"] += 1
    return names


def tool_names(folder: Path = TOOLS) -> Counter:
    """The tools: tools/*.py and *.sh, helpers named _* aside."""
    return Counter(p.name for p in folder.iterdir()
                   if p.suffix in (".py", ".sh") and not p.name.startswith("_"))


def pytest_functions() -> int:
    """Test functions in tests/ (module level, or methods of Test* classes)."""
    count = 0
    for path in (REPO_ROOT / "tests").rglob("test_*.py"):
        for node in ast.parse(path.read_text()).body:
            body = node.body if isinstance(node, ast.ClassDef) and \
                node.name.startswith("Test") else [node]
            count += sum(isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
                         and n.name.startswith("test") for n in body)
    return count


def gtest_cases() -> int:
    return sum(len(GTEST_CASE.findall(p.read_text())) for p in GTESTS.glob("*.cpp"))


def test_readme_names_every_package_module():
    number, line = readme_row("Python package")
    listed = Counter(n for n in named(line) if n != "liftedstruct/")
    assert listed == package_names(), differences(
        f"README.md:{number} (the 'Python package' row)", listed, package_names())


def test_readme_names_every_tool():
    number, line = readme_row("command-line tools")
    listed = Counter(n for n in named(line) if n != "tools/")
    assert listed == tool_names(), differences(
        f"README.md:{number} (the 'command-line tools' row)", listed, tool_names())


def test_readme_test_counts_are_the_sources():
    number, line = readme_row("test counts")
    for pattern, actual, what in (
            (r"(\d+) pytest test functions", pytest_functions(), "pytest test functions"),
            (r"(\d+) gtest cases", gtest_cases(), "gtest cases")):
        found = re.search(pattern, line)
        assert found, f"README.md:{number}: no '<n> {what}'"
        assert int(found.group(1)) == actual, (
            f"README.md:{number}: says {found.group(1)} {what}; the tree has {actual}: "
            f"write {actual} there")


def test_build_doc_names_every_overlay_folder():
    text = (REPO_ROOT / "docs" / "BUILD.md").read_text()
    missing = [f"caffe_layers/{sub}" for sub in OVERLAY if f"`caffe_layers/{sub}`" not in text]
    assert not missing, f"docs/BUILD.md: the overlay also covers {', '.join(missing)}"


def test_check_names_an_unlisted_tool(tmp_path):
    """A tool added without a README line fails the check, which names it."""
    for name in [*tool_names(), "new_tool.py", "_helper.py", "list.txt"]:
        (tmp_path / name).touch()
    number, line = readme_row("command-line tools")
    listed = Counter(n for n in named(line) if n != "tools/")
    assert listed != tool_names(tmp_path)
    assert differences(f"README.md:{number}", listed, tool_names(tmp_path)) == \
        f"README.md:{number}: add `new_tool.py`"


def test_gtest_cases_are_counted_at_line_starts():
    assert len(GTEST_CASE.findall("TYPED_TEST(A, B) {}\n  TEST(C, D) {}\n// TEST(E)\n")) == 2
