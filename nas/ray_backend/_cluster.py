"""Connecting to Ray and fitting a trial's resources to the cluster's nodes."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import ray

from nas.config import SearchConfig
from nas.errors import UserError

__all__ = [
    "CONNECT_TIMEOUT_ENV",
    "alive_nodes",
    "auto_concurrency",
    "check_cluster_resources",
    "check_address",
    "cleanup_stale_ray",
    "node_resources",
    "ray_cluster",
    "stop_ray_under",
    "trial_device",
    "trial_resources",
]

log = logging.getLogger(__name__)

_EPS = 1e-9


#: Environment variable: seconds to wait for a Ray cluster given by ``search.address`` to answer
#: (default :data:`DEFAULT_CONNECT_TIMEOUT_S`); an environment setting, not a config key, so that
#: changing it does not change any stage's key.
CONNECT_TIMEOUT_ENV = "DIFFNAS_RAY_CONNECT_TIMEOUT_S"
DEFAULT_CONNECT_TIMEOUT_S = 30.0
#: The file in the search folder naming the local Ray this driver started (session folder, pids).
RAY_STATE_FILE = "ray-local.json"

_AUTH_REMEDY = (
    "Ray's token authentication refused this driver: give it the cluster's token (the file "
    "~/.ray/auth_token, RAY_AUTH_TOKEN_PATH=<file> or RAY_AUTH_TOKEN=<token>, with RAY_AUTH_MODE=token), "
    "or start the cluster and this driver both with RAY_AUTH_MODE=disabled on a private network"
)


def connect_timeout_s() -> float:
    """Seconds to wait for a cluster to answer (:data:`CONNECT_TIMEOUT_ENV`, default 30)."""
    text = os.environ.get(CONNECT_TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_CONNECT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{CONNECT_TIMEOUT_ENV}={text!r} is not a number of seconds") from None
    if not value > 0:
        raise UserError(f"{CONNECT_TIMEOUT_ENV}={text!r} must be > 0 seconds")
    return value


def _is_auth_error(text: str) -> bool:
    low = text.lower()
    return "authenticat" in low or "unauthenticated" in low or "auth_token" in low or "auth token" in low


def check_address(address: str, timeout_s: float | None = None) -> None:
    """Fail within ``timeout_s`` (default :func:`connect_timeout_s`) with one line when ``address``
    does not answer as a Ray cluster: nothing listening (at once), no answer (after the bound), or a
    token-authentication refusal (with the remedy). ``auto`` and ``ray://`` addresses are tried by
    a probe process only.

    The probe is a separate ``python -c "import ray; ray.init(address=...)"`` killed at the bound:
    an ``ray.init`` that gets no answer otherwise retries for minutes.
    """
    bound = connect_timeout_s() if timeout_s is None else float(timeout_s)
    hint = (f"(bounded by {CONNECT_TIMEOUT_ENV}={bound:g}); check that a head runs there (`ray start --head` "
            "prints its address) and that this machine can reach it, or leave search.address unset for a local Ray")
    if address != "auto" and "://" not in address:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise UserError(f"search.address {address!r} is not 'auto' or host:port (e.g. 10.0.0.5:6379)")
        try:
            with socket.create_connection((host, int(port)), timeout=min(bound, 10.0)):
                pass
        except OSError as err:
            raise UserError(f"nothing answers at the Ray address {address!r} ({err.strerror or err}) {hint}") from None
    code = ("import logging, ray, sys\n"
            "try:\n"
            f"    ray.init(address={address!r}, logging_level=logging.ERROR, log_to_driver=False)\n"
            "except BaseException as e:\n"
            "    print('DIFFNAS_PROBE_ERROR', type(e).__name__, ' '.join(str(e).split())[:400]); sys.exit(3)\n"
            "ray.shutdown()\n")
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=bound,
                              env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    except subprocess.TimeoutExpired:
        raise UserError(f"the Ray cluster at {address!r} did not answer within {bound:g} s {hint}") from None
    if done.returncode == 0:
        return
    text = " ".join((done.stdout + " " + done.stderr).split())
    if _is_auth_error(text):
        raise UserError(f"cannot join the Ray cluster at {address!r}: {_AUTH_REMEDY}")
    detail = text.split("DIFFNAS_PROBE_ERROR", 1)[-1].strip()[:300] or f"exit status {done.returncode}"
    raise UserError(f"cannot join the Ray cluster at {address!r}: {detail} {hint}")


@contextlib.contextmanager
def ray_cluster(config: SearchConfig, state_dir: Path | None = None, check: bool = True) -> Iterator[bool]:
    """Connect to Ray for the duration of a search; yields True when this call started it.

    An already initialised Ray (a test's ``Cluster``, a user's session) is used as it is.
    ``config.address`` ``None`` starts a local instance (shut down afterwards); ``auto`` or an
    address joins a running cluster (``ray start --head`` on one node, ``ray start
    --address=<head>:6379`` on the others), after :func:`check_address` (bounded, one line on
    failure; ``check=False``: the caller checked). With ``state_dir`` (the search folder, whose lock the caller holds), a local Ray's
    session folder and processes are recorded there, and those of a driver killed before it could
    shut its Ray down are terminated first (:func:`cleanup_stale_ray`).
    """
    if ray.is_initialized():
        yield False
        return
    common: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
    if config.address:
        if check:
            check_address(config.address)
        try:
            ray.init(address=config.address, **common)
        except Exception as err:  # noqa: BLE001 - Ray raises many types here; each becomes one line
            text = " ".join(str(err).split())
            if type(err).__name__ == "AuthenticationError" or _is_auth_error(text):
                raise UserError(f"cannot join the Ray cluster at {config.address!r}: {_AUTH_REMEDY}") from None
            if not isinstance(err, (ConnectionError, RuntimeError, ValueError)):
                raise
            raise UserError(
                f"cannot join the Ray cluster at {config.address!r}: {text[:300]} "
                "(start one with 'ray start --head' and run from a node of it, or leave search.address unset "
                "for a local Ray)"
            ) from None
        state = None
    else:
        num_gpus = config.num_gpus
        if num_gpus is not None and float(num_gpus).is_integer():
            num_gpus = int(num_gpus)
        if state_dir is not None:
            cleanup_stale_ray(state_dir)
        # address="local": always a fresh instance; a bare ray.init() would silently join any Ray
        # already running on this machine (and then refuse num_cpus/num_gpus)
        ray.init(address="local", num_cpus=config.num_cpus, num_gpus=num_gpus, include_dashboard=False, **common)
        state = _record_local_ray(state_dir) if state_dir is not None else None
    try:
        yield True
    finally:
        ray.shutdown()
        if state is not None:
            with contextlib.suppress(OSError):
                state.unlink()


def _proc_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _proc_uid(pid: int) -> int | None:
    try:
        return Path(f"/proc/{pid}").stat().st_uid
    except OSError:
        return None


def _session_processes(session_dir: str) -> list[int]:
    """Pids of this user's processes whose command line names ``session_dir`` (a Ray session's
    folder: its GCS, raylet, agents and workers all carry it)."""
    if not session_dir or not Path("/proc").is_dir():
        return []
    me, out = os.getuid(), []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            pid = int(entry.name)
            if _proc_uid(pid) == me and session_dir in _proc_cmdline(pid):
                out.append(pid)
    return out


def _proc_env(pid: int, name: str) -> str | None:
    """Environment variable ``name`` of process ``pid`` (None: unset or unreadable)."""
    try:
        for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
            key, _, value = item.partition(b"=")
            if key.decode(errors="replace") == name:
                return value.decode(errors="replace")
    except OSError:
        return None
    return None


def _raylet_children(raylet_pids: set[int]) -> list[int]:
    """This user's processes started by one of ``raylet_pids`` (Ray's agents and workers carry
    ``RAY_RAYLET_PID``): they rename themselves (``ray::DashboardAgent``), so their command line
    no longer names the session folder, and they outlive a killed driver."""
    if not raylet_pids or not Path("/proc").is_dir():
        return []
    me, want, out = os.getuid(), {str(p) for p in raylet_pids}, []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            pid = int(entry.name)
            if _proc_uid(pid) == me and _proc_env(pid, "RAY_RAYLET_PID") in want:
                out.append(pid)
    return out


def _record_local_ray(state_dir: Path) -> Path | None:
    """Write ``<state_dir>/ray-local.json``: this driver, the local Ray's session folder and the
    pids of its processes (what :func:`cleanup_stale_ray` needs after a ``kill -9``)."""
    try:
        node = ray._private.worker._global_node  # no public API names a local instance's processes
        session_dir = str(node.get_session_dir_path())
        pids = sorted({int(p.process.pid) for infos in node.all_processes.values() for p in infos
                       if getattr(p, "process", None) is not None} | set(_session_processes(session_dir)))
    except Exception as err:  # noqa: BLE001 - recording is best effort; the search goes on without it
        log.debug("could not record the local Ray's processes: %s", err)
        return None
    path = Path(state_dir) / RAY_STATE_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"driver_pid": os.getpid(), "host": socket.gethostname(),
                               "session_dir": session_dir, "pids": pids}, indent=2))
    tmp.replace(path)
    return path


def cleanup_stale_ray(state_dir: Path, wait_s: float = 10.0) -> list[int]:
    """Terminate what a local Ray started by a killed driver left running, as recorded in
    ``<state_dir>/ray-local.json``; returns the pids signalled. Only processes of this user on this
    host whose command line names that Ray's session folder are touched (a recycled pid is left
    alone), and nothing while the recorded driver is still alive. The caller holds the search
    folder's lock, so no live driver of this folder owns them."""
    path = Path(state_dir) / RAY_STATE_FILE
    if not path.is_file():
        return []
    try:
        state = json.loads(path.read_text())
        session_dir, driver = str(state["session_dir"]), int(state["driver_pid"])
        recorded = [int(p) for p in state.get("pids", [])]
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("%s is unreadable; not cleaning up after the previous driver", path)
        return []
    if state.get("host") != socket.gethostname():
        return []  # another machine's Ray (a shared run folder): not ours to stop
    if driver != os.getpid() and _proc_cmdline(driver) and _proc_uid(driver) == os.getuid() \
            and session_dir in _proc_cmdline(driver):
        return []  # pragma: no cover - the lock makes this impossible
    ours = {p for p in recorded if session_dir in _proc_cmdline(p) and _proc_uid(p) == os.getuid()}
    ours |= set(_session_processes(session_dir))
    # the raylet dies with the driver; its agents do not, and their names no longer carry the session
    pids = sorted(ours | set(_raylet_children(set(recorded))))
    _terminate(pids, wait_s)
    if pids:
        log.warning("stopped %d Ray process(es) left by a killed search driver (pid %d): %s", len(pids), driver,
                    " ".join(map(str, pids)))
    with contextlib.suppress(OSError):
        path.unlink()
    return pids


def _terminate(pids: list[int], wait_s: float) -> None:
    """SIGTERM ``pids``, then SIGKILL those still alive after ``wait_s`` (bounded polling)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = [p for p in pids if _proc_cmdline(p)]
        for pid in alive:
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = [p for p in alive if _proc_cmdline(p) and not _zombie(p)]
        if not alive:
            break


def stop_ray_under(temp_dir: str | Path, wait_s: float = 10.0) -> list[int]:
    """Stop the Ray nodes started on this host with ``ray start --temp-dir=<temp_dir>`` (or a folder
    inside it): ``ray stop`` scoped to one temp folder; returns the pids signalled.

    ``ray stop`` itself stops every Ray process of the machine, other users' and other sessions'
    included. This touches only this user's processes whose command line names ``temp_dir`` (GCS,
    raylets, dashboard, agents, workers) and those started by one of those raylets (they carry
    ``RAY_RAYLET_PID``; renamed agents and job drivers no longer name the folder): SIGTERM, then
    SIGKILL after ``wait_s``.

    Example:
        >>> import tempfile
        >>> stop_ray_under(tempfile.mkdtemp())  # nothing runs there
        []
    """
    root = str(Path(temp_dir).resolve())
    ours = set(_session_processes(root))
    raylets = {p for p in ours if Path(_proc_cmdline(p).split(" ", 1)[0]).name == "raylet"}
    pids = sorted(ours | set(_raylet_children(raylets)))
    _terminate(pids, wait_s)
    return pids


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def alive_nodes() -> list[dict[str, Any]]:
    """The nodes of the connected Ray cluster that are alive."""
    return [n for n in ray.nodes() if n.get("Alive")]


def node_resources(node: Mapping[str, Any], name: str) -> float:
    """How much of resource ``name`` (``CPU``, ``GPU``) a node of :func:`alive_nodes` has."""
    return float(node.get("Resources", {}).get(name, 0.0))


def trial_resources(config: SearchConfig, nodes: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """``{"cpu": ..., "gpu": ...}`` for one trial; ``gpus_per_trial=None`` means one GPU when the
    cluster has any, else none."""
    gpus = config.gpus_per_trial
    if gpus is None:
        gpus = 1.0 if sum(node_resources(n, "GPU") for n in nodes) >= 1.0 else 0.0
    return {"cpu": float(config.cpus_per_trial), "gpu": float(gpus)}


def check_cluster_resources(
    per_trial: Mapping[str, float], nodes: Sequence[Mapping[str, Any]], what: str = "each trial"
) -> None:
    """Raise :class:`UserError` (naming the numbers) when no node can hold ``per_trial``.

    Example:
        >>> nodes = [{"Resources": {"CPU": 4.0, "GPU": 1.0}}, {"Resources": {"CPU": 4.0, "GPU": 1.0}}]
        >>> check_cluster_resources({"cpu": 1, "gpu": 1}, nodes)
        >>> check_cluster_resources({"cpu": 1, "gpu": 2}, nodes)
        Traceback (most recent call last):
        ...
        search_spaces.errors.UserError: each trial asks for 2 GPU(s) (search.gpus_per_trial) but no node of the Ray cluster has that many: the largest node has 1 GPU(s), the cluster 2 GPU(s) over 2 node(s); lower search.gpus_per_trial (a fraction shares a GPU between trials) or add a node with more GPUs
    """
    need_cpu = float(per_trial.get("cpu", 0.0))
    need_gpu = float(per_trial.get("gpu", 0.0))
    if need_gpu > 1 and not need_gpu.is_integer():
        raise UserError(f"{what} asks for {need_gpu:g} GPUs: above one GPU, Ray needs a whole number")
    for n in nodes:
        if node_resources(n, "CPU") + _EPS >= need_cpu and node_resources(n, "GPU") + _EPS >= need_gpu:
            return
    count = len(nodes)
    for res, need, key in (("GPU", need_gpu, "search.gpus_per_trial"), ("CPU", need_cpu, "search.cpus_per_trial")):
        best = max((node_resources(n, res) for n in nodes), default=0.0)
        total = sum(node_resources(n, res) for n in nodes)
        if need > best + _EPS:
            fix = (
                "lower search.gpus_per_trial (a fraction shares a GPU between trials) or add a node with more GPUs"
                if res == "GPU" else "lower search.cpus_per_trial or add a node with more CPUs"
            )
            raise UserError(
                f"{what} asks for {need:g} {res}(s) ({key}) but no node of the Ray cluster has that many: "
                f"the largest node has {best:g} {res}(s), the cluster {total:g} {res}(s) over {count} node(s); {fix}"
            )
    raise UserError(
        f"{what} asks for {need_cpu:g} CPU(s) and {need_gpu:g} GPU(s) on one node, and no node of the Ray "
        f"cluster ({count} node(s)) has both; change search.cpus_per_trial / search.gpus_per_trial"
    )


def auto_concurrency(per_trial: Mapping[str, float], nodes: Sequence[Mapping[str, Any]]) -> int:
    """How many trials fit in the cluster at once (at least 1).

    Example:
        >>> auto_concurrency({"cpu": 1, "gpu": 0.5}, [{"Resources": {"CPU": 8.0, "GPU": 2.0}}])
        4
    """
    total = 0
    for n in nodes:
        fits = []
        for res, key in (("CPU", "cpu"), ("GPU", "gpu")):
            need = float(per_trial.get(key, 0.0))
            if need > 0:
                fits.append(int(math.floor(node_resources(n, res) / need + _EPS)))
        total += min(fits) if fits else int(node_resources(n, "CPU"))
    return max(1, total)


def trial_device(gpu_ids: Sequence[Any]) -> str:
    """Torch device for a trial: ``cuda`` when Ray gave it a GPU and CUDA works (Ray sets
    ``CUDA_VISIBLE_DEVICES``, so ``cuda`` is the assigned GPU), else ``cpu``.

    Example:
        >>> trial_device([])
        'cpu'
    """
    if not gpu_ids:
        return "cpu"
    try:
        import torch

        if torch.cuda.is_available():
            return "cuda"
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return "cpu"
