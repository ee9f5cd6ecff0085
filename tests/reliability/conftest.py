"""A tiny, really trained run (base model, intervals, experts) built once per session; each case
works on a copy of it."""

from __future__ import annotations

import pytest

from tests.reliability.cases import build_tiny_run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The folder holding ``tiny.yaml`` and ``runs/tiny/`` (do not modify: copy it)."""
    return build_tiny_run(tmp_path_factory.mktemp("tiny-run"))
