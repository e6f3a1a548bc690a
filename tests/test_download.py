"""Downloads from a local HTTP server on 127.0.0.1; nothing else is ever contacted."""

from __future__ import annotations

import hashlib
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from cellae.data import download as download_module
from cellae.data.download import DEFAULT_URL, download
from cellae.errors import CellaeError

PAYLOAD = np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes()
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class Handler(BaseHTTPRequestHandler):
    """Serves ``server.payload`` at /cell_images.zip, honouring Range unless told not to."""

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        server = self.server
        server.requests.append(self.headers.get("Range"))
        if self.path != "/cell_images.zip":
            self.send_error(404)
            return
        data, start = server.payload, 0
        requested = re.match(r"bytes=(\d+)-$", self.headers.get("Range") or "")
        if requested and server.ranges:
            start = int(requested.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if server.cut_requests and len(server.requests) <= server.cut_requests:
            self.wfile.write(body[: server.cut_after])  # then hang up mid-file
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.payload = PAYLOAD
    httpd.ranges = True
    httpd.cut_requests = 0  # the first this-many requests are cut off ...
    httpd.cut_after = 0  # ... after this many bytes
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/cell_images.zip"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_default_url_is_the_nih_archive():
    assert DEFAULT_URL == "https://data.lhncbc.nlm.nih.gov/public/Malaria/cell_images.zip"


def test_download_and_verify(server, tmp_path):
    path = download(server.url, tmp_path, len(PAYLOAD), SHA, progress=False)
    assert path == tmp_path / "cell_images.zip"
    assert path.read_bytes() == PAYLOAD
    assert [p.name for p in tmp_path.iterdir()] == ["cell_images.zip"]
    assert server.requests == [None]
    # a second call finds the verified file and does not download again
    assert download(server.url, tmp_path, len(PAYLOAD), SHA, progress=False) == path
    assert server.requests == [None]


def test_interrupted_download_resumes_with_range(server, tmp_path):
    server.cut_requests, server.cut_after = 1, 12_345
    path = download(server.url, tmp_path, None, SHA, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert server.requests == [None, "bytes=12345-"]


def test_part_file_from_an_earlier_run_is_resumed(server, tmp_path):
    (tmp_path / "cell_images.zip.part").write_bytes(PAYLOAD[:20_000])
    path = download(server.url, tmp_path, len(PAYLOAD), SHA, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert server.requests == ["bytes=20000-"]


def test_complete_part_file_is_finished_without_data(server, tmp_path):
    (tmp_path / "cell_images.zip.part").write_bytes(PAYLOAD)
    path = download(server.url, tmp_path, None, SHA, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert server.requests == [f"bytes={len(PAYLOAD)}-"]  # answered 416: nothing left


def test_server_that_ignores_range_restarts_cleanly(server, tmp_path):
    server.ranges = False
    (tmp_path / "cell_images.zip.part").write_bytes(b"x" * 1000)
    path = download(server.url, tmp_path, len(PAYLOAD), SHA, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert server.requests == ["bytes=1000-"]


def test_connection_that_keeps_breaking_can_be_resumed_later(server, tmp_path):
    server.cut_requests, server.cut_after = download_module.ATTEMPTS, 5_000
    with pytest.raises(CellaeError, match="run again to resume"):
        download(server.url, tmp_path, len(PAYLOAD), SHA, progress=False)
    part = tmp_path / "cell_images.zip.part"
    assert part.stat().st_size == download_module.ATTEMPTS * 5_000
    assert not (tmp_path / "cell_images.zip").exists()
    path = download(server.url, tmp_path, len(PAYLOAD), SHA, progress=False)
    assert path.read_bytes() == PAYLOAD


def test_checksum_mismatch_leaves_no_file(server, tmp_path):
    with pytest.raises(CellaeError, match="sha256"):
        download(server.url, tmp_path, None, "0" * 64, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_size_mismatch_leaves_no_file(server, tmp_path):
    with pytest.raises(CellaeError, match="expected 60000"):
        download(server.url, tmp_path, 60_000, None, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_existing_file_that_does_not_match_is_reported(server, tmp_path):
    (tmp_path / "cell_images.zip").write_bytes(b"something else")
    with pytest.raises(CellaeError, match="delete it"):
        download(server.url, tmp_path, None, SHA, progress=False)
    assert server.requests == []


def test_http_error_is_reported(server, tmp_path):
    with pytest.raises(CellaeError, match="HTTP 404"):
        download(server.url.replace("cell_images", "missing"), tmp_path, None, None, False)


def test_no_network_says_which_host(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free once closed: nothing listens there
    with pytest.raises(CellaeError, match="could not reach 127.0.0.1"):
        download(f"http://127.0.0.1:{port}/cell_images.zip", tmp_path, None, None, False)
