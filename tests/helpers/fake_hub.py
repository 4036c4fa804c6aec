"""A stand-in for the Hugging Face Hub's HTTP API on 127.0.0.1, recording what `huggingface_hub` sends.

It answers the calls a push makes: repository creation, branch creation, README metadata validation,
the pre-upload check (every file is declared "regular", so contents travel inside the commit) and the
commit itself (an NDJSON body of a header line and one line per file, base64 contents).
"""

from __future__ import annotations

import base64
import gzip
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"null")


@dataclass
class FakeHub:
    requests: list[Request] = field(default_factory=list)
    #: path in repo -> bytes, per (repo_id, revision), from commit requests
    commits: list[dict[str, Any]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def endpoint(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                return body

            def _reply(self, payload: Any, status: int = 200) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):  # noqa: N802
                request = Request(
                    "POST", self.path, {k.lower(): v for k, v in self.headers.items()}, self._body()
                )
                hub.requests.append(request)
                path = self.path.split("?")[0]
                if path == "/api/repos/create":
                    payload = request.json()
                    repo = f"{payload.get('organization') or 'user'}/{payload['name']}"
                    return self._reply({"url": f"{hub.endpoint}/{repo}", "name": repo})
                if path == "/api/validate-yaml":
                    return self._reply({})
                if "/preupload/" in path:
                    files = request.json()["files"]
                    return self._reply(
                        {
                            "files": [
                                {
                                    "path": f["path"],
                                    "uploadMode": "regular",
                                    "shouldIgnore": False,
                                    "oid": None,
                                }
                                for f in files
                            ],
                            "commitOid": "0" * 40,
                        }
                    )
                if "/commit/" in path:
                    repo = path.split("/api/models/")[1].split("/commit/")[0]
                    revision = path.split("/commit/")[1]
                    files, header = {}, None
                    for line in request.body.splitlines():
                        item = json.loads(line)
                        if item["key"] == "header":
                            header = item["value"]
                        elif item["key"] == "file":
                            files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                        else:
                            files[item["value"]["path"]] = item
                    hub.commits.append({"repo": repo, "revision": revision, "header": header, "files": files})
                    oid = "1" * 40
                    return self._reply(
                        {
                            "commitUrl": f"{hub.endpoint}/{repo}/commit/{oid}",
                            "commitOid": oid,
                            "pullRequestUrl": None,
                        }
                    )
                if "/branch/" in path:
                    return self._reply({})
                return self._reply({"error": f"not handled: {path}"}, 404)

            def do_GET(self):  # noqa: N802
                hub.requests.append(
                    Request("GET", self.path, {k.lower(): v for k, v in self.headers.items()}, b"")
                )
                return self._reply({"error": "not found"}, 404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
