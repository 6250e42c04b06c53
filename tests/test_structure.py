"""The package's layout: packages by concern with their docstrings, one place (the task registry) that knows what a
model does, public names kept where they were, and no private name imported from another module."""

import ast
import importlib
import re
from pathlib import Path

import pytest

import hf_starsse

PACKAGE = Path(hf_starsse.__file__).parent
PACKAGES = ("adapters", "cards", "cli", "demo", "ensemble", "evaluation", "hub", "run", "soups", "storage", "tasks",
            "training")  # fmt: skip
SELF_CONTAINED = ("ensemble/modeling_ensemble.py", "ensemble/modeling_causal_ensemble.py")  # travel as remote code


def test_task_names_live_in_the_registry():
    """Outside `tasks/`, only the self-contained ensemble modeling (remote code) names an Auto class in code."""
    named = []
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith("tasks/") or relative in SELF_CONTAINED:
            continue
        code = ast.unparse(ast.parse(path.read_text()))  # docstrings kept, comments gone
        code = re.sub(r'"""[\s\S]*?"""|\'\'\'[\s\S]*?\'\'\'', "", code)
        named += [f"{relative}: {hit}" for hit in re.findall(r"AutoModelFor\w+|MAPPING_NAMES", code)]
    assert named == []


@pytest.mark.parametrize("name", PACKAGES)
def test_packages_say_what_they_own(name):
    module = importlib.import_module(f"hf_starsse.{name}")
    assert module.__doc__ and len(module.__doc__.split()) > 20
    assert name == "demo" or "May import:" in module.__doc__


def test_public_names_import_from_the_package():
    for name in hf_starsse.__all__:
        assert getattr(hf_starsse, name) is not None, name
    from hf_starsse.metrics import accuracy, compute_metrics  # the documented module path

    assert accuracy.__module__ == compute_metrics.__module__ == "hf_starsse.evaluation.metrics"
    assert hf_starsse.load_base_model.__module__ == "hf_starsse.storage.weights"


def test_no_private_name_is_imported_across_modules():
    private = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            is_ours = isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("hf_starsse"))
            if is_ours:
                private += [
                    f"{path.name}: {alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_") and not alias.name.endswith("__")
                ]
    assert private == []


def package_imports() -> dict[str, set[str]]:
    """Which of hf_starsse's packages each package imports from (relative imports)."""
    edges = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        module = ["hf_starsse", *(parts[:-1] if parts[-1] == "__init__" else parts)]
        package = module if parts[-1] == "__init__" else module[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                target = package[: len(package) - node.level + 1] + (node.module.split(".") if node.module else [])
                if len(parts) > 1 and len(target) > 1 and target[1] != parts[0]:
                    edges.setdefault(parts[0], set()).add(target[1])
    return edges


def test_packages_import_down_the_layers():
    """The packages form no cycle (e.g. `cli` imports `demo`, which must not import `cli`)."""
    edges, cycles = package_imports(), []

    def visit(package: str, path: list[str]) -> None:
        for imported in edges.get(package, ()):
            if imported in path:
                cycles.append(path[path.index(imported) :] + [imported])
            else:
                visit(imported, path + [imported])

    for package in edges:
        visit(package, [package])
    assert cycles == []
    assert "tasks" not in edges  # the registry is the bottom layer


@pytest.mark.parametrize("name", PACKAGES)
def test_packages_import_only_what_their_docstring_allows(name):
    """Each package's "May import:" line (backticked names, or "every package but ...") covers what it imports."""
    module = importlib.import_module(f"hf_starsse.{name}")
    line = module.__doc__.split("May import:")[1].split("\n\n")[0]
    named = set(re.findall(r"`(\w+)`", line))
    allowed = set(PACKAGES) - named - {name} if "every package" in line else named
    assert package_imports().get(name, set()) - allowed - {"errors"} == set()


def test_no_module_is_over_400_lines():
    sizes = {
        path.relative_to(PACKAGE).as_posix(): len(path.read_text().splitlines()) for path in PACKAGE.rglob("*.py")
    }
    assert {name: size for name, size in sizes.items() if size > 400} == {}
