"""A user's space as the README writes it (a rule in ``check_rules``, no ``repair``): its samples
and decodes keep the rule, rules that crash are reported as ValueErrors, ``macs`` checks its
arch, and the shipped contract suite runs on it from a project outside this repository."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest

from search_spaces import Dimension, ProductSpace, SearchSpace, SimpleSpace
from search_spaces.testing import SearchSpaceContract

README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_space_source() -> str:
    """The first Python block of the README's "Search spaces in Python" section."""
    text = README.read_text()
    section = text[text.index("## Search spaces in Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def _readme_space_class() -> type:
    module = types.ModuleType("readme_space")
    exec(compile(_readme_space_source(), "readme_space.py", "exec"), module.__dict__)
    return module.AttentionBlockSpace


AttentionBlockSpace = _readme_space_class()


def _old_sample(space: SearchSpace, rng: np.random.Generator):
    """One draw per free dimension, repaired: what sample() returns for a space whose draws
    all keep its rules."""
    free = {d.name: d.choices[int(rng.integers(len(d.choices)))] for d in space.free_dimensions()}
    return space.repair(space.complete(free))


class TestReadmeSpaceContract(SearchSpaceContract):
    @pytest.fixture
    def space(self):
        return AttentionBlockSpace()


def test_readme_space_has_a_rule_and_no_repair():
    assert "check_rules" in AttentionBlockSpace.__dict__
    assert "repair" not in AttentionBlockSpace.__dict__


def test_no_sample_of_1000_breaks_the_rule():
    space = AttentionBlockSpace()
    rng = np.random.default_rng(0)
    archs = [space.sample(rng) for _ in range(1000)]
    assert sum(not space.is_valid(a) for a in archs) == 0
    assert all(a["attn.width"] % a["attn.heads"] == 0 for a in archs)
    # the draws without rejection break the rule often: the test would catch a no-op
    rng = np.random.default_rng(1)
    raw = [_old_sample(space, rng) for _ in range(1000)]
    assert sum(not space.is_valid(a) for a in raw) > 100


def test_samples_are_uniform_over_the_valid_archs():
    space = AttentionBlockSpace()
    rng = np.random.default_rng(0)
    counts: dict = {}
    for _ in range(6000):
        a = space.sample(rng)
        counts[a] = counts.get(a, 0) + 1
    assert len(counts) == 48  # 5 widths x 6 heads, 6 (width, heads) pairs invalid, x 2 depths
    assert min(counts.values()) > 0.5 * 6000 / 48 and max(counts.values()) < 1.5 * 6000 / 48


def test_no_decode_of_1000_breaks_the_rule_and_valid_roundtrips_are_exact():
    space = AttentionBlockSpace()
    rng = np.random.default_rng(0)
    for _ in range(1000):
        vec = rng.random(len(space.free_dimensions()))
        arch = space.decode(vec)
        space.validate(arch)
        assert space.decode(vec) == arch
        assert space.decode(space.encode(arch)) == arch


def test_decode_returns_the_nearest_valid_arch():
    space = AttentionBlockSpace()
    # width 16 (index 0), heads 3 (index 2 of 6): 16 % 3 != 0; one index step away are
    # heads 2 and 4 (both divide 16) and width 24 (divisible by 3); heads at 0.39 * 5 = 1.95
    # is nearest index 2 and then index 1 (heads 2)
    arch = space.decode([0.0, 0.39, 1.0])
    assert arch.to_dict() == {"attn.heads": 2, "attn.width": 16, "mlp.depth": True}


def test_valid_spaces_draw_exactly_as_one_draw_per_sample():
    dims = [Dimension("w", (8, 16, 32)), Dimension("h", (1, 2, 4)), Dimension("d", (False, True))]
    space = SimpleSpace(dims, macs_fn=lambda a: a["w"])
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    assert [space.sample(a) for _ in range(200)] == [_old_sample(space, b) for _ in range(200)]
    assert a.integers(1 << 30) == b.integers(1 << 30)


def test_an_impossible_rule_is_a_value_error_naming_it():
    def never(arch):
        raise ValueError("w: never valid")

    space = SimpleSpace([Dimension("w", (1, 2))], macs_fn=lambda a: a["w"], rules=[never])
    with pytest.raises(ValueError, match="sample.*100 random draws.*w: never valid"):
        space.sample(np.random.default_rng(0))
    with pytest.raises(ValueError, match="decode.*w: never valid"):
        space.decode([0.5])


class _AssertSpace(SearchSpace):
    def dimensions(self):
        return (Dimension("width", (16, 24, 32)), Dimension("heads", (1, 3, 4)))

    def check_rules(self, arch):
        assert arch["width"] % arch["heads"] == 0, "heads must divide width"

    def macs(self, arch):
        return arch["width"]


def test_a_rule_written_with_assert_is_a_value_error_naming_the_rule():
    space = _AssertSpace()
    bad = {"width": 16, "heads": 3}
    with pytest.raises(ValueError, match=r"_AssertSpace\.check_rules.*arch\[\"width\"\] % arch\[\"heads\"\]"
                                         r".*heads must divide width") as info:
        space.validate(bad)
    assert isinstance(info.value.__cause__, AssertionError)
    assert not space.is_valid(bad)
    rng = np.random.default_rng(0)
    assert all(space.is_valid(space.sample(rng)) for _ in range(200))


def test_a_rule_that_crashes_is_a_value_error_naming_the_rule_in_every_space():
    def heads_divide_width(arch):
        return 1 // (arch["width"] % arch["heads"] == 0)  # ZeroDivisionError when broken

    dims = (Dimension("width", (16, 24)), Dimension("heads", (1, 3)))
    simple = SimpleSpace(dims, macs_fn=lambda a: a["width"], rules=[heads_divide_width])
    with pytest.raises(ValueError, match="heads_divide_width.*ZeroDivisionError") as info:
        simple.validate({"width": 16, "heads": 3})
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    product = ProductSpace({"e0": _AssertSpace(), "e1": simple})
    with pytest.raises(ValueError, match="e0/.*_AssertSpace.check_rules") as info:
        product.validate({**product.full(), "e0/heads": 3, "e0/width": 16})
    assert isinstance(info.value.__cause__, AssertionError)
    with pytest.raises(ValueError, match="e1/rule .*heads_divide_width"):
        product.validate({**product.full(), "e1/heads": 3, "e1/width": 16})


@pytest.mark.parametrize("space", [AttentionBlockSpace(), ProductSpace({"a": AttentionBlockSpace()})],
                         ids=["user", "product"])
def test_macs_checks_its_arch(space):
    prefix = "a/" if isinstance(space, ProductSpace) else ""
    full = dict(space.full())
    assert space.macs(full) == space.macs(space.full())
    with pytest.raises(ValueError, match=f"unknown key '{prefix}attn.widht'"):
        space.macs({**{k: v for k, v in full.items() if k != f"{prefix}attn.width"}, f"{prefix}attn.widht": 32})
    with pytest.raises(ValueError, match=rf"{prefix}attn\.width: choice 40 is out of range"):
        space.macs({**full, f"{prefix}attn.width": 40})
    with pytest.raises(ValueError, match=rf"{prefix}mlp\.depth: choice 1 has the wrong type"):
        space.macs({**full, f"{prefix}mlp.depth": 1})
    assert space.macs({**full, f"{prefix}attn.width": np.int64(32)}) == space.macs({**full, f"{prefix}attn.width": 32})


_TEST_FILE = '''
import numpy as np
import pytest

from search_spaces.testing import SearchSpaceContract

from my_space import AttentionBlockSpace


class TestAttentionBlockSpace(SearchSpaceContract):
    n_samples = 50

    @pytest.fixture
    def space(self):
        return AttentionBlockSpace()


def test_the_installed_package_is_used_and_no_sample_breaks_the_rule():
    import os
    import sys
    repo = {repo!r}
    assert all(os.path.abspath(p or os.curdir) != repo for p in sys.path), "the repository is on sys.path"
    space = AttentionBlockSpace()
    rng = np.random.default_rng(0)
    assert sum(not space.is_valid(space.sample(rng)) for _ in range(1000)) == 0
'''


def test_the_shipped_contract_runs_in_a_project_outside_the_repository(tmp_path_factory):
    project = tmp_path_factory.mktemp("user_project")
    repo = README.parent
    assert repo not in project.parents
    (project / "my_space.py").write_text(_readme_space_source())
    (project / "test_my_space.py").write_text(textwrap.dedent(_TEST_FILE).replace("{repo!r}", repr(str(repo))))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_ADDOPTS")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "."],
        cwd=project, env=env, capture_output=True, text=True, timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    n_contract = len([n for n in dir(SearchSpaceContract) if n.startswith("test_")])
    passed = int(re.search(r"(\d+) passed", out).group(1))
    skipped = re.search(r"(\d+) skipped", out)  # the tie case: the space has no tied dimensions
    assert passed + (int(skipped.group(1)) if skipped else 0) == n_contract + 1, out
    assert passed >= n_contract, out
