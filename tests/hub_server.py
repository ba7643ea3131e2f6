"""A real HTTP server on loopback that serves the Hugging Face hub's URL layout
(``/<org>/<name>/resolve/<revision>/<file>``, ``/datasets/<org>/<name>/resolve/<revision>/<file>``) and plain
paths, to GET and HEAD, logging each request; :func:`hub_at_endpoint` points ``HF_ENDPOINT`` at it."""
from __future__ import annotations

import http.server
import threading

REVISION = "0123456789abcdef0123456789abcdef01234567"


class HubServer(http.server.ThreadingHTTPServer):
    """Serves ``files`` (URL path -> bytes) and logs each request as (method, path)."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), HubHandler)
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def publish(self, repo: str, files: dict[str, bytes], repo_type: str = "model") -> None:
        prefix = "" if repo_type == "model" else f"/{repo_type}s"
        self.files.update({f"{prefix}/{repo}/resolve/{REVISION}/{name}": body for name, body in files.items()})


class HubHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _head(self) -> bytes | None:
        self.server.requests.append((self.command, self.path))
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return None
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        return body

    def do_HEAD(self):
        self._head()

    def do_GET(self):
        body = self._head()
        if body is not None:
            self.wfile.write(body)


def serving():
    """A started :class:`HubServer`; stop it with ``shutdown()`` and ``server_close()``."""
    server = HubServer()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def hub_at_endpoint(monkeypatch):
    """A test fixture's body: a serving :class:`HubServer` that ``HF_ENDPOINT`` names, stopped afterwards."""
    server = serving()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    yield server
    server.shutdown()
    server.server_close()
