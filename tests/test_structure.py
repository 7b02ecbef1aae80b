"""The design card's rules that code can check."""

import ast
from pathlib import Path

from tests.conftest import ROOT


def test_core_never_imports_streamlit():
    offenders = []
    for path in (ROOT / "core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] == "streamlit"]
    assert offenders == []


def test_repo_has_the_design_card_layout():
    for name in ("Home.py", "pages", "core", "assets", "models", "tests", "requirements.txt"):
        assert (ROOT / name).exists(), name


def test_every_config_field_documents_itself():
    import dataclasses

    from core.stages import STAGES
    for stage, entry in STAGES.items():
        for f in dataclasses.fields(entry.config):
            assert f.metadata.get("help"), f"{stage}: --{f.name} has no help text"
