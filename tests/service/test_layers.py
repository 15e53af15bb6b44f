"""The layers the layout shows (README "Layout"), checked on the imports themselves: every
``import`` statement of every module, at any depth (lazy imports inside functions included).

    service/core       torch-free core: imports no torch, ray or trainer code, nor the layers above it
    service/analysis   reads the record: no torch, ray or trainer code
    service/web        the web pages: no torch, ray or trainer code, nor the service that mounts them
    service/control    the service: no torch, ray or trainer code
    trainer/           data plane and driver: never the CLI, the service or the analyses' page
    service/cli.py     on top: may import anything
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "torchvision", "ray", "trainer")


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def modules(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


def _offending(folder: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    bad = {}
    for path in modules(folder):
        hits = sorted(m for m in imports(path) if m.split(".")[0] in forbidden or m.startswith(forbidden))
        if hits:
            bad[str(path.relative_to(REPO))] = hits
    return bad


def test_the_torch_free_core_imports_no_torch_ray_trainer_or_upper_layer():
    assert modules("service/core"), "no modules found: the layout moved?"
    assert _offending("service/core", HEAVY + ("service.control", "service.analysis", "service.cli")) == {}


@pytest.mark.parametrize("layer", ["service/analysis", "service/web", "service/control"])
def test_analysis_and_control_planes_never_import_torch_ray_or_trainer(layer):
    assert _offending(layer, HEAVY + ("service.cli",)) == {}


def test_the_data_plane_never_imports_the_cli_or_the_service():
    assert _offending("trainer", ("service.cli", "service.control", "service.web")) == {}


def test_the_pages_never_import_the_service_that_mounts_them():
    assert modules("service/web"), "no modules found: the layout moved?"
    assert _offending("service/web", ("service.control", "service.cli")) == {}


def test_importing_the_core_loads_no_torch_or_ray():
    code = ("import sys; import service.core.record, service.core.spec, service.core.loading, service.core.storage, "
            "service.core.checkpoint, service.core.fetch, service.analysis.tables, service.analysis.pull, "
            "service.control.api, service.web.pages; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ray', 'trainer')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_readme_layout_names_every_module_folder():
    """Every package and module under service/ and trainer/ is named in the README's Layout section."""
    readme = (REPO / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    missing = []
    for path in modules("service") + modules("trainer"):
        if path.name == "__init__.py":
            name = str(path.parent.relative_to(REPO)) + "/"
            if name not in layout:
                missing.append(name)
        elif path.stem not in layout:
            missing.append(str(path.relative_to(REPO)))
    assert missing == [], f"README Layout does not name: {missing}"
