"""A real `vaelab explore` server process for tests, and plain HTTP clients for it."""

from __future__ import annotations

import http.client
import os
import queue
import re
import select
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class ExploreServer:
    """`python -m vaelab explore RUN --port 0 ...` as a subprocess; `url` once it is serving."""

    def __init__(self, run: Path, *flags: str, timeout: float = 90.0) -> None:
        self.args = [sys.executable, "-m", "vaelab", "explore", str(run), "--port", "0", *flags]
        self.timeout = timeout
        self.url = ""

    def start(self) -> ExploreServer:
        """Start the process (returns at once; `wait` for it to serve)."""
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self._lines: queue.Queue = queue.Queue()
        self._stderr: list[str] = []
        threading.Thread(target=lambda: [self._lines.put(line) for line in self.proc.stdout] + [self._lines.put("")],
                         daemon=True).start()
        threading.Thread(target=lambda: self._stderr.extend(self.proc.stderr), daemon=True).start()
        return self

    def wait(self) -> ExploreServer:
        """Block until the server prints its URL; `url` is set then."""
        try:
            while not self.url:
                line = self._lines.get(timeout=self.timeout)
                if not line:
                    break
                match = re.search(r"vaelab explorer: (http://\S+)", line)
                if match:
                    self.url = match.group(1)
        except queue.Empty:
            pass
        if self.url:
            return self
        self.stop()
        raise AssertionError(f"the explorer did not start: {''.join(self._stderr)[-2000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> ExploreServer:
        return self.start().wait()

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def connection(self) -> http.client.HTTPConnection:
        parts = urllib.parse.urlsplit(self.url)
        return http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)

    def __exit__(self, *exc) -> None:
        self.stop()


def http_get(url: str, host: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def multipart(name: str, data: bytes, content_type: str = "application/octet-stream") -> tuple[bytes, str]:
    """A multipart/form-data body with one file field `file`; returns (body, content-type header)."""
    boundary = uuid.uuid4().hex
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            f"Content-Type: {content_type}\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def post_encode(server: ExploreServer, name: str, data: bytes) -> tuple[int, bytes]:
    """POST one file to /api/encode with a Content-Length; (status, body)."""
    body, content_type = multipart(name, data)
    conn = server.connection()
    try:
        conn.request("POST", "/api/encode", body=body, headers={"Content-Type": content_type})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def post_streamed(server: ExploreServer, chunks: Iterable[bytes], content_type: str, *,
                  finish: bool = True, wait: float = 30.0) -> tuple[int, bytes, int]:
    """POST a chunked body (no Content-Length) to /api/encode; (status, body, bytes sent).

    With `finish=False` the body is never ended: the last chunk is followed by silence, so any
    answer must have been given while the body was still arriving. If the server answers while
    chunks are being sent, sending stops there.
    """
    conn = server.connection()
    sent = 0
    try:
        conn.putrequest("POST", "/api/encode")
        conn.putheader("Content-Type", content_type)
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        try:
            for chunk in chunks:
                if select.select([conn.sock], [], [], 0)[0]:
                    break  # the server has answered (or hung up) already
                conn.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                sent += len(chunk)
            else:
                if finish:
                    conn.send(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and hung up before the body ended: its answer is still there
        if not select.select([conn.sock], [], [], wait)[0]:
            return 0, b"", sent  # no answer while the body was unfinished
        response = conn.getresponse()
        return response.status, response.read(), sent
    finally:
        conn.close()
