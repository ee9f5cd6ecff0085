"""``run_tasks_ray``: one Ray task per call, records in the driver as each finishes, and a failed
task named in one line with the rest cancelled."""

from __future__ import annotations

import pytest
import ray

from nas.config import SearchConfig
from nas.errors import UserError
from nas.ray_backend import TaskCall, run_tasks_ray


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_each_call_runs_once_and_is_reported_as_it_finishes(local_ray):
    # ``dict`` is a module-level callable taking the ``job`` keyword: it returns what the task saw
    seen = []
    out = run_tasks_ray([TaskCall("a", dict, ({"x": 1},)), TaskCall("b", dict, ({"x": 2},))],
                        SearchConfig(backend="ray"), on_done=lambda key, rec: seen.append(key))
    assert sorted(seen) == ["a", "b"] and set(out) == {"a", "b"}
    assert out["a"]["result"]["x"] == 1 and out["b"]["result"]["x"] == 2
    for rec in out.values():
        assert rec["node"] and rec["device"] == "cpu" and rec["result"]["job"]["node"] == rec["node"]


def test_a_failed_task_is_one_line_naming_it(local_ray):
    calls = [TaskCall("ok", dict, ()), TaskCall("bad", dict, (1,))]  # dict(1) raises TypeError
    with pytest.raises(UserError) as err:
        run_tasks_ray(calls, SearchConfig(backend="ray"), name="demo-task")
    line = str(err.value)
    assert "\n" not in line and line.startswith("demo-task bad failed in its Ray task: TypeError")


def test_keys_must_be_distinct(local_ray):
    with pytest.raises(ValueError, match="distinct"):
        run_tasks_ray([TaskCall("a", dict), TaskCall("a", dict)], SearchConfig(backend="ray"))
