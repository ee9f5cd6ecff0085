"""The files a search writes besides the allocations: the trial table (``search/trials.csv``
and ``search/trials.jsonl``, one row per Optuna trial), the points of each study's front, the
session log's total wall time, and JSON written atomically."""

from __future__ import annotations

import contextlib
import csv
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nas.run import to_jsonable
from nas.search.study import ATTR_DUP, ATTR_KEY, ATTR_RETRY, ATTR_SOURCE, ATTR_STATE

if TYPE_CHECKING:  # pragma: no cover
    from nas.search.driver import StudyDriver

__all__ = ["atomic_json", "front_point", "sessions_wall_s", "trial_rows", "write_trial_table"]


def trial_rows(driver: StudyDriver) -> list[dict[str, Any]]:
    """One row of ``search/trials.csv`` per Optuna trial of the driver's study (evaluated,
    duplicate, interrupted, skipped, waiting)."""
    rows = []
    for t in driver.study.get_trials(deepcopy=False):
        key = t.user_attrs.get(ATTR_KEY)
        rec = driver.by_number.get(t.number)
        if rec is not None and rec.get("key") != key:
            rec = None
        if rec is not None:
            state = rec["state"]
        elif ATTR_DUP in t.user_attrs:
            state = "duplicate"
        elif t.user_attrs.get(ATTR_STATE):
            state = str(t.user_attrs[ATTR_STATE])
        else:
            state = t.state.name.lower()
        full = driver.promoted.get(key) if rec is not None else None
        placement = (rec or {}).get("placement") or {}
        rows.append({
            "study": driver.spec.name,
            "number": t.number,
            "state": state,
            "source": t.user_attrs.get(ATTR_SOURCE, "sampler"),
            "key": key,
            "duplicate_of": t.user_attrs.get(ATTR_DUP),
            "retry_of": t.user_attrs.get(ATTR_RETRY),
            "feasible": t.user_attrs.get("diffnas_feasible"),
            "macs": t.user_attrs.get("diffnas_macs"),
            "macs_ratio": t.user_attrs.get("diffnas_macs_ratio"),
            "quality": (rec or {}).get("quality"),
            "quality_full": (full or {}).get("quality"),
            "eval_s": (rec or {}).get("eval_s"),
            "attempts": (rec or {}).get("attempts"),
            "node_id": placement.get("node_id"),
            "gpu_ids": ",".join(str(g) for g in placement.get("gpu_ids", []) or []),
            "error": (rec or {}).get("error"),
            "arch": json.dumps(t.user_attrs.get("diffnas_arch"), sort_keys=True),
        })
    return rows


def front_point(rec: Mapping[str, Any], drv: StudyDriver) -> dict[str, Any]:
    """One point of ``search/pareto-<study>.json``."""
    full = drv.promoted.get(rec["key"])
    return {
        "number": rec["number"], "key": rec["key"], "quality": rec["quality"], "macs": rec["macs"],
        "macs_ratio": rec["macs_ratio"], "feasible": rec.get("feasible"),
        "quality_full": (full or {}).get("quality"), "arch": rec["arch"],
    }


def sessions_wall_s(path: Path) -> float:
    """Wall seconds of every finished session recorded in ``search/sessions.jsonl``."""
    total = 0.0
    if path.exists():
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError, TypeError, ValueError):
                rec = json.loads(line)
                if rec.get("event") == "end":
                    total += float(rec.get("wall_s") or 0.0)
    return total


def atomic_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON through a temporary file renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(to_jsonable(data), indent=2, sort_keys=False))
    tmp.replace(path)


def write_trial_table(rows: list[dict[str, Any]], csv_path: Path, jsonl_path: Path) -> None:
    """Write the trial rows as ``search/trials.csv`` and ``search/trials.jsonl`` (each renamed into place)."""
    columns = ["study", "number", "state", "source", "key", "duplicate_of", "retry_of", "feasible", "macs",
               "macs_ratio", "quality", "quality_full", "eval_s", "attempts", "node_id", "gpu_ids", "error", "arch"]
    tmp = csv_path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    tmp.replace(csv_path)
    tmpj = jsonl_path.with_suffix(".jsonl.tmp")
    tmpj.write_text("".join(json.dumps(to_jsonable(r)) + "\n" for r in rows))
    tmpj.replace(jsonl_path)
