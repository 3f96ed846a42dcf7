"""Architecture guards: showcase_core never imports Ray; no job module imports another job module."""

import ast
import glob
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = {"common", "harness"}  # what every job may import
RUNNERS = {"demo", "cli"}  # the two modules that run other stages, through each stage's main only


def modules(package: str) -> list[str]:
    return sorted(glob.glob(os.path.join(REPO, package, "**", "*.py"), recursive=True))


def imported(path: str) -> list[tuple[str, int]]:
    """(module name, line) of every import in a file, relative ones made absolute; importlib.import_module too."""
    tree = ast.parse(open(path).read(), path)
    package = os.path.relpath(os.path.dirname(path), REPO).replace(os.sep, ".")
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.append((base, node.lineno))
            found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
            argument = node.args[0] if node.args else None
            text = argument.value if isinstance(argument, ast.Constant) else ast.unparse(argument) if argument else ""
            found.append((text.strip("f'\""), node.lineno))
    return found


@pytest.mark.parametrize("path", modules("showcase_core"), ids=lambda p: os.path.relpath(p, REPO))
def test_the_library_never_imports_ray(path):
    assert not [(name, line) for name, line in imported(path) if name == "ray" or name.startswith("ray.")]


def job_of(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "jobs" and parts[1] not in ("", "{stage}") else None


@pytest.mark.parametrize("path", modules("jobs"), ids=os.path.basename)
def test_no_job_imports_another_job(path):
    this = os.path.basename(path)[:-3]
    if this in RUNNERS:
        return  # checked below: they may only call a stage's main
    others = {(name, line) for name, line in imported(path) if job_of(name) not in (None, this, *SHARED)
              and job_of(name) != "__init__"}
    assert not others, f"{this} imports {sorted(others)}"


@pytest.mark.parametrize("runner", sorted(RUNNERS))
def test_runners_use_only_a_stages_main(runner):
    path = os.path.join(REPO, "jobs", f"{runner}.py")
    tree = ast.parse(open(path).read())
    stages = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
              and node.level == 1 and not node.module for alias in node.names} - SHARED
    used = {(node.value.id, node.attr) for node in ast.walk(tree) if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name) and node.value.id in stages}
    assert all(attr == "main" for _, attr in used), sorted(used)
    if runner == "cli":  # the CLI imports each stage by name and calls its main
        assert "import_module" in open(path).read() and ".main" in open(path).read()


def test_the_guard_sees_an_import_of_another_job(tmp_path):
    """The guard itself: a relative and an absolute import of another job, and an import_module, are all found."""
    bad = tmp_path / "jobs" / "bad.py"
    bad.parent.mkdir()
    bad.write_text("from .nightly import DEFAULTS\nimport jobs.embed\nimportlib.import_module('jobs.serve')\n")
    names = {name for name, _ in imported(str(bad))}
    # relative names resolve against the file's package, here tmp_path's
    assert any(n.endswith("jobs.nightly") for n in names) and "jobs.embed" in names and "jobs.serve" in names
