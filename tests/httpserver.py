"""A tiny loopback HTTP file server with Range support and scripted misbehaviour, for tests.

It plays the outside world's failure modes: expired tokens (403), throttling (429/503 with
``Retry-After``), dead mirrors (a fixed status per path), servers that refuse HEAD, and
connections dropped mid-body.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit


class FlakyServer:
    """Serve ``root`` on 127.0.0.1; see the attributes for the failures it injects."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.valid_token: str | None = None  # if set, requests need ?token=<this> (else 403)
        self.drop_after: int | None = None  # close the connection after this many body bytes
        self.drops_left = 0  # how many responses to truncate
        self.error_status = 503  # what the next ``errors_left`` requests get instead of data
        self.errors_left = 0
        self.retry_after: str | None = None  # Retry-After header sent with scripted errors
        self.status_for: dict[str, int] = {}  # path -> status it always answers (a dead mirror)
        self.head_status: int | None = None  # if set, every HEAD gets this (405: HEAD refused)
        self.requests: list[tuple[str, str | None, int]] = []  # (path, Range header, status)
        self.methods: list[str] = []  # the method of each entry of ``requests``
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _log(self, path: str, rng: str | None, status: int) -> None:
                server.requests.append((path, rng, status))
                server.methods.append(self.command)

            def _fail(self, path: str, rng: str | None, status: int, retry_after: bool) -> None:
                self._log(path, rng, status)
                body = b"" if self.command == "HEAD" else f"error {status}\n".encode()
                self.send_response(status)
                if retry_after and server.retry_after is not None:
                    self.send_header("Retry-After", server.retry_after)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _serve(self, body: bool) -> None:
                parts = urlsplit(self.path)
                rng = self.headers.get("Range")
                token = parse_qs(parts.query).get("token", [None])[0]
                if server.valid_token is not None and token != server.valid_token:
                    self._log(parts.path, rng, 403)
                    self.send_error(403, "token expired")
                    return
                if parts.path in server.status_for:
                    self._fail(parts.path, rng, server.status_for[parts.path], retry_after=True)
                    return
                if not body and server.head_status is not None:
                    self._fail(parts.path, rng, server.head_status, retry_after=False)
                    return
                if server.errors_left:
                    server.errors_left -= 1
                    self._fail(parts.path, rng, server.error_status, retry_after=True)
                    return
                file = server.root / parts.path.lstrip("/")
                if not file.is_file():
                    self._log(parts.path, rng, 404)
                    self.send_error(404)
                    return
                data = file.read_bytes()
                start, end, status = 0, len(data) - 1, 200
                if rng and rng.startswith("bytes="):
                    first, _, last = rng[6:].partition("-")
                    start = int(first) if first else max(0, len(data) - int(last))
                    end = min(int(last), len(data) - 1) if first and last else len(data) - 1
                    if start >= len(data):
                        self._log(parts.path, rng, 416)
                        self.send_error(416)
                        return
                    status = 206
                self._log(parts.path, rng, status)
                chunk = data[start : end + 1]
                self.send_response(status)
                self.send_header("Content-Length", str(len(chunk)))
                self.send_header("Accept-Ranges", "bytes")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                self.end_headers()
                if not body:
                    return
                if server.drops_left and server.drop_after is not None:
                    server.drops_left -= 1
                    self.wfile.write(chunk[: server.drop_after])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(chunk)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FlakyServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)
