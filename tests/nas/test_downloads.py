"""Downloads (issue 14): local copies first, then the hub / clean-fid download as those libraries
do; offline switches respected; an unreachable server is one line naming the local-copy remedy.

Nothing here touches the real network: "unreachable" is a closed port on 127.0.0.1 and "reachable"
is a tiny HTTP server in this process.
"""

from __future__ import annotations

import http.server
import io
import os
import socket
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import nas.metrics.inception_weights as iw
from nas._network import OFFLINE_ENV, offline_reason, reachability_problem
from nas.errors import UserError
from nas.metrics import ALLOW_DOWNLOAD_ENV, INCEPTION_ENV, INCEPTION_FILENAME, resolve_inception_weights


def _closed_port() -> int:
    with socket.socket() as s:  # bound, never listening: a connect is refused
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _no_network(*args, **kwargs):
    raise AssertionError("a download was attempted")


@pytest.fixture
def no_local_copy(monkeypatch, tmp_path: Path) -> Path:
    """No weights given, none in the cache or in clean-fid's /tmp folder; clean-fid's own
    download raises if it is ever reached."""
    import cleanfid.downloads_helper

    monkeypatch.delenv(INCEPTION_ENV, raising=False)
    monkeypatch.delenv(ALLOW_DOWNLOAD_ENV, raising=False)
    monkeypatch.setattr(iw, "_CLEANFID_DEFAULT_FOLDER", tmp_path / "cleanfid-tmp")
    monkeypatch.setattr(cleanfid.downloads_helper, "check_download_inception", _no_network)
    return tmp_path / "cache"


@pytest.fixture
def online(monkeypatch) -> None:
    """Lift the session's offline switches (tests/conftest.py) for one test; no proxy, so the
    local servers and closed ports below are what is contacted."""
    for name in ("HF_HUB_OFFLINE", OFFLINE_ENV, "http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY",
                 "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


def test_the_test_session_never_downloads() -> None:
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ[OFFLINE_ENV] == "1"
    assert offline_reason() == "HF_HUB_OFFLINE=1"


@pytest.mark.parametrize("switch", ["HF_HUB_OFFLINE=1", f"{OFFLINE_ENV}=1", f"{ALLOW_DOWNLOAD_ENV}=0"])
def test_inception_offline_switches_refuse_in_one_line(switch, monkeypatch, no_local_copy, online) -> None:
    name, value = switch.split("=")
    monkeypatch.setenv(name, value)
    with pytest.raises(UserError) as err:
        resolve_inception_weights(None, no_local_copy)
    msg = str(err.value)
    assert "\n" not in msg and switch in msg and "downloads are off" in msg
    assert INCEPTION_ENV in msg and "evaluation.inception_weights" in msg and INCEPTION_FILENAME in msg
    assert not no_local_copy.exists()  # nothing written


def test_inception_local_copies_come_before_any_download(monkeypatch, no_local_copy, online) -> None:
    cached = no_local_copy / "inception" / INCEPTION_FILENAME
    cached.parent.mkdir(parents=True)
    with zipfile.ZipFile(cached, "w") as z:
        z.writestr("x/data.pkl", b"weights")
    assert resolve_inception_weights(None, no_local_copy) == cached  # _no_network was not reached


def test_inception_unreachable_server_fails_fast_with_the_local_copy_remedy(monkeypatch, no_local_copy,
                                                                             online) -> None:
    monkeypatch.setattr(iw, "INCEPTION_URL", f"http://127.0.0.1:{_closed_port()}/{INCEPTION_FILENAME}")
    with pytest.raises(UserError) as err:
        resolve_inception_weights(None, no_local_copy)
    msg = str(err.value)
    assert "\n" not in msg and "cannot download Inception weights" in msg and "refused" in msg
    assert f"{INCEPTION_ENV}=/path/to/{INCEPTION_FILENAME}" in msg
    assert not (no_local_copy / "inception").exists()


class _Server:
    """A one-file HTTP server on 127.0.0.1 (what clean-fid's urlopen fetches in these tests)."""

    def __init__(self, body: bytes) -> None:
        payload = body

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/{INCEPTION_FILENAME}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("inception/data.pkl", b"not really weights")
    return buf.getvalue()


@pytest.fixture
def served(monkeypatch, tmp_path: Path, online) -> Iterator[callable]:
    """Serve a body at a local URL and point both diffnas and clean-fid's downloader at it."""
    import cleanfid.downloads_helper

    monkeypatch.delenv(INCEPTION_ENV, raising=False)
    monkeypatch.delenv(ALLOW_DOWNLOAD_ENV, raising=False)
    monkeypatch.setattr(iw, "_CLEANFID_DEFAULT_FOLDER", tmp_path / "cleanfid-tmp")
    servers: list[_Server] = []

    def serve(body: bytes) -> str:
        server = _Server(body)
        servers.append(server)
        monkeypatch.setattr(iw, "INCEPTION_URL", server.url)
        monkeypatch.setattr(cleanfid.downloads_helper, "inception_url", server.url)
        return server.url

    yield serve
    for server in servers:
        server.close()


def test_inception_downloads_through_clean_fid_when_the_server_answers(served, tmp_path: Path) -> None:
    body = _zip_bytes()
    served(body)
    cache = tmp_path / "cache"
    got = resolve_inception_weights(None, cache)
    assert got == cache / "inception" / INCEPTION_FILENAME and got.read_bytes() == body
    assert sorted(p.name for p in got.parent.iterdir()) == [INCEPTION_FILENAME]  # no temporary left
    assert socket.getdefaulttimeout() is None  # the download's read timeout is not left behind
    assert resolve_inception_weights(None, cache) == got  # second time: the cached copy


def test_inception_download_that_is_not_an_archive_is_refused_and_not_kept(served, tmp_path: Path) -> None:
    served(b"<html>captive portal</html>")
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match="not a TorchScript archive.*DIFFNAS_INCEPTION_WEIGHTS"):
        resolve_inception_weights(None, cache)
    assert list((cache / "inception").iterdir()) == []


# ------------------------------------------------------------------------------------------ hub

@pytest.fixture
def empty_hub_cache(monkeypatch, tmp_path: Path) -> Path:
    import huggingface_hub
    from huggingface_hub import constants

    real = huggingface_hub.snapshot_download

    def cache_only(repo_id, *args, **kwargs):
        if not kwargs.get("local_files_only"):
            raise AssertionError("the hub was contacted")
        return real(repo_id, *args, **kwargs)

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", cache_only)
    return tmp_path


@pytest.mark.parametrize("switch", ["HF_HUB_OFFLINE=1", f"{OFFLINE_ENV}=1"])
def test_hub_id_offline_switches_refuse_in_one_line(switch, monkeypatch, empty_hub_cache, online) -> None:
    from huggingface_hub import constants

    from nas.model_folders import resolve_hub_id

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # read at import: only the variable decides
    name, value = switch.split("=")
    monkeypatch.setenv(name, value)
    with pytest.raises(UserError) as err:
        resolve_hub_id("some-org/some-model")
    msg = str(err.value)
    assert "\n" not in msg and switch in msg and "some-org/some-model" in msg and "--local-dir" in msg


def test_hub_id_unreachable_hub_fails_fast_naming_the_local_copy(monkeypatch, empty_hub_cache, online) -> None:
    from huggingface_hub import constants

    from nas.model_folders import resolve_hub_id

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    with pytest.raises(UserError) as err:
        resolve_hub_id("some-org/some-model")
    msg = str(err.value)
    assert "\n" not in msg and endpoint in msg and "cannot be reached" in msg and "refused" in msg
    assert "hf download some-org/some-model --local-dir" in msg and "pass its path" in msg


def test_reachability_of_a_listening_and_a_closed_port() -> None:
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(1)
        port = listening.getsockname()[1]
        assert reachability_problem(f"http://127.0.0.1:{port}/x", 5.0) is None
    assert "refused" in reachability_problem(f"http://127.0.0.1:{_closed_port()}/x", 5.0)
    assert reachability_problem("http:///nohost", 5.0) == "no host in 'http:///nohost'"
