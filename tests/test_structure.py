"""The design card's rules that code can check: packages by role, imports that run downwards only, pages
that use public names, one table of stages."""

import ast
import dataclasses
from pathlib import Path

import pytest

from tests.conftest import ROOT

# core's packages, lowest first: a module may import from its own layer and those below, never above.
LAYERS = {"core": 0, "core.config": 0, "core.progress": 0, "core.errors": 0, "core.stages": 0, "core.machine": 0,
          "core.envs": 1, "core.storage": 2, "core.models": 3, "core.pipeline": 4, "core.app": 5,
          "core.cli": 6, "core.__main__": 6}
PACKAGES = ("models", "envs", "pipeline", "storage", "app", "app/race")


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def imports(path: Path) -> list[tuple[int, str, str]]:
    """Every import in ``path``, top-level or inside a function: (line, module, name or '')."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, "") for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, node.module, a.name) for a in node.names]
    return found


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in LAYERS:
            return LAYERS[".".join(parts[:i])]
    return None


def core_files() -> list[Path]:
    return sorted((ROOT / "core").rglob("*.py"))


def test_core_never_imports_streamlit():
    offenders = [f"{p.relative_to(ROOT)}:{line}: {mod}" for p in core_files() for line, mod, _ in imports(p)
                 if mod.split(".")[0] == "streamlit"]
    assert offenders == []


def test_every_core_module_sits_in_a_layer():
    assert [module_name(p) for p in core_files() if layer_of(module_name(p)) is None] == []


def test_imports_between_packages_run_downwards_only():
    offenders = []
    for path in core_files():
        here = layer_of(module_name(path))
        for line, mod, name in imports(path):
            if not mod.startswith("core"):
                continue
            target = f"{mod}.{name}" if mod == "core" and name else mod  # from core import <subpackage>
            if layer_of(target) is not None and layer_of(target) > here:
                offenders.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert offenders == []


def test_the_layer_check_catches_an_upward_import(tmp_path):
    """The rule above can fail: a storage module importing the app is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("from core.app import jobs\n")
    assert layer_of(imports(bad)[0][1]) > layer_of("core.storage.artifacts")


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_says_what_it_holds(package):
    doc = ast.get_docstring(ast.parse((ROOT / "core" / package / "__init__.py").read_text(encoding="utf-8")))
    assert doc and len(doc) > 100, f"core/{package}/__init__.py needs a docstring saying what the package holds"


def test_pages_use_only_public_names_of_core():
    offenders = []
    for path in [ROOT / "Home.py", *sorted((ROOT / "pages").glob("*.py"))]:
        for line, mod, name in imports(path):
            private = any(part.startswith("_") for part in mod.split(".")) or name.startswith("_")
            if mod.startswith("core") and private:
                offenders.append(f"{path.relative_to(ROOT)}:{line}: {mod} {name}")
    assert offenders == []


def test_every_pipeline_module_is_a_stage_named_as_the_cli_names_it():
    from core.stages import STAGES
    stage_modules = {s.entry.split(":")[0] for s in STAGES.values()}
    assert stage_modules == {f"core.pipeline.{name.replace('-', '_')}" for name in STAGES}
    helpers = {"core.pipeline", "core.pipeline.rollout", "core.pipeline.cluster", "core.pipeline.gate",
               "core.pipeline.dream", "core.pipeline.training", "core.pipeline.preflight"}
    modules = {module_name(p) for p in (ROOT / "core" / "pipeline").glob("*.py")}
    assert modules - helpers <= stage_modules


def test_every_stage_entry_point_exists():
    from core.stages import STAGES
    for name, stage in STAGES.items():
        assert callable(stage.function()), name
        assert stage.preflight is None or stage.preflight.startswith("core.pipeline.preflight:"), name


def test_repo_has_the_design_card_layout():
    for name in ("Home.py", "pages", "core", "assets", "models", "tests", "requirements.txt", "pyproject.toml"):
        assert (ROOT / name).exists(), name


def test_every_config_field_documents_itself():
    from core.stages import STAGES
    for stage, entry in STAGES.items():
        for f in dataclasses.fields(entry.config):
            assert f.metadata.get("help"), f"{stage}: --{f.name} has no help text"
