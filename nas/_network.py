"""Whether downloads may happen, and a fast reachability check before one starts.

Downloads follow the ecosystem's conventions: a hub id is fetched through ``huggingface_hub``
and clean-fid's Inception weights through clean-fid, when the network is there. Both are off
when ``HF_HUB_OFFLINE=1`` (the hub's own switch) or ``DIFFNAS_OFFLINE=1`` is set. Before a
download starts, a plain TCP connect to the server (or to the proxy that urllib would use)
must succeed within :data:`CONNECT_TIMEOUT_S` seconds (``DIFFNAS_CONNECT_TIMEOUT_S``), so a
machine without a network fails within seconds instead of waiting on a library without a
timeout.

Example:
    >>> reachability_problem("http://127.0.0.1:9/x", timeout_s=2.0) is not None  # nothing listens on port 9
    True
"""

from __future__ import annotations

import os
import socket
import urllib.parse
import urllib.request

__all__ = ["CONNECT_TIMEOUT_S", "OFFLINE_ENV", "connect_timeout_s", "offline_reason", "reachability_problem"]

#: Environment variable that turns off every download diffnas would start (hub and Inception).
OFFLINE_ENV = "DIFFNAS_OFFLINE"
#: Default seconds a TCP connect to a download server may take before the command gives up.
CONNECT_TIMEOUT_S = 10.0
_TIMEOUT_ENV = "DIFFNAS_CONNECT_TIMEOUT_S"
_TRUE = {"1", "ON", "YES", "TRUE"}


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in _TRUE


def offline_reason() -> str | None:
    """``"HF_HUB_OFFLINE=1"`` or ``"DIFFNAS_OFFLINE=1"`` when downloads are off, else None."""
    if _env_true("HF_HUB_OFFLINE"):
        return "HF_HUB_OFFLINE=1"
    if _env_true(OFFLINE_ENV):
        return f"{OFFLINE_ENV}=1"
    return None


def connect_timeout_s() -> float:
    """:data:`CONNECT_TIMEOUT_S`, or ``DIFFNAS_CONNECT_TIMEOUT_S`` when set to a positive number."""
    raw = os.environ.get(_TIMEOUT_ENV, "").strip()
    try:
        value = float(raw) if raw else CONNECT_TIMEOUT_S
    except ValueError:
        return CONNECT_TIMEOUT_S
    return value if value > 0 else CONNECT_TIMEOUT_S


def reachability_problem(url: str, timeout_s: float | None = None) -> str | None:
    """None when a TCP connection to ``url``'s server (or its proxy) opens within ``timeout_s``;
    else a short reason (``"connection refused"``, ``"no answer within 10 s"``, ...)."""
    timeout_s = connect_timeout_s() if timeout_s is None else timeout_s
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and host and not urllib.request.proxy_bypass(host):
        p = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = p.hostname, p.port or 80
    if not host:
        return f"no host in {url!r}"
    where = f"{host}:{port}"
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except socket.gaierror:
        return f"{host} does not resolve (no network or no DNS)"
    except ConnectionRefusedError:
        return f"connection to {where} refused"
    except (socket.timeout, TimeoutError):
        return f"no answer from {where} within {timeout_s:g} s"
    except OSError as exc:
        return f"cannot connect to {where} ({exc.strerror or exc})"
