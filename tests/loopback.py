"""A loopback HTTP server for download tests (the ``server`` fixture in tests/conftest.py yields one).

url = server.add("/data.tar", body)        # serve bytes at a path; returns the full URL
server.cut.add("/data.tar")                 # drop the connection half-way once (resume tests)
server.requests                             # [(path, Range header or None), ...]
"""

from __future__ import annotations

import http.server
import threading


class LoopbackServer:
    """Serves ``files`` on 127.0.0.1 with Range support; paths in ``cut`` drop the connection mid-file once."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, str]] = {}
        self.cut: set[str] = set()
        self.requests: list[tuple[str, str | None]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                rng = self.headers.get("Range")
                outer.requests.append((self.path, rng))
                if self.path not in outer.files:
                    self.send_error(404)
                    return
                body, ctype = outer.files[self.path]
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                self.send_response(206 if rng else 200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body) - start))
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.end_headers()
                if self.path in outer.cut and not rng:
                    outer.cut.discard(self.path)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def add(self, path: str, body: bytes, ctype: str = "application/octet-stream") -> str:
        self.files[path] = (body, ctype)
        return self.url(path)
