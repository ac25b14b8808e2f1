"""The apps depend one way only: rag <- knowledge <- curation <- training.

The source is parsed (every `import` and `from ... import` anywhere in a module, inside
functions too), so an import hidden from module loading is still seen. Migrations are left
out: a migration may name another app's models, as curation's 0007 waits for training's 0002.
"""

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["rag", "knowledge", "curation", "training"]
FIRST_PARTY = {*LAYERS, "config"}


def imported_packages(source: str) -> set[str]:
    """The top-level packages a module's source imports, wherever the import statement stands."""
    packages = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            packages.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            packages.add(node.module.split(".")[0])
    return packages


def forbidden_imports(app: str, source: str) -> set[str]:
    """The layers above `app` (and `config`, for rag) that this source imports."""
    above = set(LAYERS[LAYERS.index(app) + 1 :])
    if app == "rag":
        above.add("config")
    return imported_packages(source) & above


def boundary_violations(root: Path = REPO_ROOT) -> list[str]:
    violations = []
    for app in LAYERS:
        for path in sorted((root / app).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            for package in sorted(forbidden_imports(app, path.read_text(encoding="utf-8"))):
                violations.append(f"{path.relative_to(root)} imports {package}")
    return violations


def test_no_app_imports_a_layer_above_it():
    assert boundary_violations() == []


@pytest.mark.parametrize(
    ("app", "source", "expected"),
    [
        ("knowledge", "from curation.models import Label\n", {"curation"}),
        ("knowledge", "def f():\n    from training.models import ModelVersion\n", {"training"}),
        ("knowledge", "import training.services.runs as runs\n", {"training"}),
        ("curation", "class A:\n    def m(self):\n        import training\n", {"training"}),
        ("rag", "from knowledge.selectors import passages_retrieve\n", {"knowledge"}),
        ("rag", "from config import settings\n", {"config"}),
        # Downward and outside imports are allowed; so is a relative import within the app.
        ("training", "from curation.models import Label\nfrom knowledge.models import Turn\nfrom rag import metrics\n", set()),
        ("curation", "from knowledge.models import Turn\nfrom . import selectors\nimport django\n", set()),
        ("knowledge", "# from curation.models import Label\nx = 'import training'\n", set()),
    ],
)
def test_the_checker_sees_every_upward_import(app, source, expected):
    assert forbidden_imports(app, source) == expected


def test_the_checker_reports_a_forbidden_import_in_a_tree(tmp_path):
    for app in LAYERS:
        (tmp_path / app / "migrations").mkdir(parents=True)
    (tmp_path / "knowledge" / "selectors.py").write_text("def live():\n    from training.models import ModelVersion\n")
    (tmp_path / "knowledge" / "migrations" / "0002.py").write_text("from training.models import ModelVersion\n")
    (tmp_path / "training" / "views.py").write_text("from knowledge.models import KnowledgeBase\n")

    assert boundary_violations(tmp_path) == ["knowledge/selectors.py imports training"]


def test_every_app_is_a_folder_of_its_own():
    assert all((REPO_ROOT / app / "__init__.py").exists() for app in LAYERS)
    assert FIRST_PARTY <= {path.name for path in REPO_ROOT.iterdir() if path.is_dir()}
