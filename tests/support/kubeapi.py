"""A recorded Kubernetes API for tests: a real HTTP server on loopback answering the list calls with responses
recorded on real clusters by others (tests/unit/fixtures/kubeapi/SOURCES.md), and a kubeconfig pointing at it."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "unit" / "fixtures" / "kubeapi"
ROUTES = {
    "/api/v1/pods": "pods-minikube.json",
    "/api/v1/services": "services.json",
    "/apis/discovery.k8s.io/v1/endpointslices": "endpointslices.json",
    "/api/v1/nodes": "nodes.json",
}
NOT_FOUND = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
             "message": "the server could not find the requested resource", "reason": "NotFound",
             "details": {}, "code": 404}


class Api:
    """A loopback HTTP server answering the list calls with the recorded responses (ReplicaSets: 404, as a
    server that does not let us list them)."""

    def __init__(self, hang: bool = False) -> None:
        self.paths: list[str] = []
        self.release = threading.Event()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # http.server's name
                path = self.path.split("?")[0]
                api.paths.append(path)
                if hang:
                    api.release.wait(30)
                name = ROUTES.get(path)
                body = (FIXTURES / name).read_bytes() if name else json.dumps(NOT_FOUND).encode()
                self.send_response(200 if name else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def kubeconfig(path: Path, server: str) -> str:
    path.write_text(f"""apiVersion: v1
kind: Config
clusters:
- cluster:
    server: {server}
  name: recorded
contexts:
- context:
    cluster: recorded
    user: nobody
  name: recorded
current-context: recorded
users:
- name: nobody
  user:
    token: not-a-real-token
""")
    return str(path)
