"""The public surface of experts/ and router/: every exported name resolves, no private imports."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("package", ["experts", "router"])
def test_every_exported_name_resolves(package):
    mod = importlib.import_module(package)
    assert mod.__all__ == sorted(mod.__all__) and len(set(mod.__all__)) == len(mod.__all__)
    for name in mod.__all__:
        assert getattr(mod, name) is not None, name


@pytest.mark.parametrize("package", ["experts", "router"])
def test_no_module_imports_another_modules_private_names(package):
    offending = []
    for path in sorted((ROOT / package).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("experts", "router"):
                offending += [f"{path.name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert not offending
