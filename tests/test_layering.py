"""The engine never imports UI packages: importing and training pulls in no ipywidgets or plotly."""

import ast
import subprocess
import sys
from pathlib import Path

ENGINE = Path(__file__).parent.parent / "workbench"
UI_PACKAGES = {"ipywidgets", "anywidget", "IPython", "widgets"}


def test_no_engine_module_imports_a_ui_package():
    for path in ENGINE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            for name in names:
                top = name.split(".")[0]
                assert top not in UI_PACKAGES, f"{path.name} imports {name}"
                # plotly draws the offline HTML reports (of runs and of studies), and only there
                assert top != "plotly" or path.name in ("report.py", "study_report.py"), f"{path.name} imports {name}"


def test_importing_the_engine_loads_no_plotting_or_widget_module():
    code = ("import sys, workbench, workbench.engine.trainer, workbench.cli; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('plotly', 'ipywidgets', 'widgets')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


# Inside the engine the arrows run one way too: the step is a layer the engines build on.
BELOW = {"step": {"engine", "run", "integrations", "studies"}, "run": {"engine", "integrations", "studies"},
         "methods": {"engine", "run", "integrations", "studies"}}


def imported_workbench_packages(path: Path) -> set[str]:
    """The workbench packages a module imports (absolute imports; the engine uses no relative ones)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        assert not (isinstance(node, ast.ImportFrom) and node.level), f"{path}: a relative import"
        found |= {n.split(".")[1] for n in names if n.startswith("workbench.") and n.count(".") >= 1}
    return found


def test_the_step_and_the_run_directory_import_no_engine():
    for package, forbidden in BELOW.items():
        for path in (ENGINE / package).rglob("*.py"):
            reached = imported_workbench_packages(path) & forbidden
            assert not reached, f"{path.relative_to(ENGINE)} imports workbench.{', workbench.'.join(sorted(reached))}"
