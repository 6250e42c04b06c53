"""A local stand-in for the Hugging Face Hub: the subset of its HTTP API that `huggingface_hub` uses to create a repo,
create a branch and commit files (`create_repo`, `create_branch`, `create_commit` / `upload_folder`).

Every file is declared "regular" at preupload, so its content arrives inline (base64) in the NDJSON commit: no LFS or
Xet storage is involved. Point `huggingface_hub` at it with `HF_ENDPOINT=hub.url` (read at import: subprocesses) or by
setting `huggingface_hub.constants.ENDPOINT` (in-process; `HfApi()` reads it when created).
"""

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

USER = "tester"


@dataclass
class Commit:
    repo_id: str
    revision: str
    message: str
    files: dict[str, bytes]


@dataclass
class Repo:
    private: bool | None
    branches: dict[str, dict[str, bytes]] = field(default_factory=lambda: {"main": {}})


class LocalHub:
    """
    A threaded HTTP server holding repositories in memory. Use as a context manager; `requests` lists
    `(method, path, authorization header)` of every request, `commits` every commit received.
    """

    def __init__(self):
        self.repos: dict[str, Repo] = {}
        self.commits: list[Commit] = []
        self.requests: list[tuple[str, str, str | None]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def __enter__(self) -> "LocalHub":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """The files of a branch of a repository."""
        return self.repos[repo_id].branches[revision]

    def answer(self, method: str, path: str, body: bytes) -> tuple[int, dict]:
        """Status and JSON answer of one API request."""
        parts = [unquote(part) for part in urlsplit(path).path.strip("/").split("/")]
        if method == "POST" and parts == ["api", "validate-yaml"]:
            return 200, {"errors": [], "warnings": []}
        if method == "POST" and parts == ["api", "repos", "create"]:
            return self._create_repo(json.loads(body))
        if method != "POST" or len(parts) != 6 or parts[:2] != ["api", "models"]:
            return 404, {"error": f"{method} {path} is not served by the local hub"}
        repo_id, action, revision = "/".join(parts[2:4]), parts[4], parts[5]
        if repo_id not in self.repos:
            return 404, {"error": f"Repository {repo_id} not found"}
        branches = self.repos[repo_id].branches
        if action == "branch":
            if revision in branches:
                return 409, {"error": f"Branch {revision} already exists"}
            branches[revision] = dict(branches[json.loads(body or b"{}").get("startingPoint", "main")])
            return 200, {}
        if revision not in branches:
            return 404, {"error": f"Revision {revision} not found"}
        if action == "preupload":
            files = json.loads(body)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
        if action == "commit":
            return self._commit(repo_id, revision, body)
        return 404, {"error": f"Unknown action {action}"}

    def _create_repo(self, payload: dict) -> tuple[int, dict]:
        repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
        if repo_id in self.repos:
            return 409, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"}
        visibility = payload.get("visibility")
        self.repos[repo_id] = Repo(private=None if visibility is None else visibility == "private")
        return 200, {"url": f"{self.url}/{repo_id}", "name": repo_id}

    def _commit(self, repo_id: str, revision: str, body: bytes) -> tuple[int, dict]:
        message, files = "", {}
        for line in body.decode().splitlines():
            item = json.loads(line)
            if item["key"] == "header":
                message = item["value"]["summary"]
            elif item["key"] == "file":
                files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            else:
                return 400, {"error": f"The local hub only takes inline files, not {item['key']}"}
        self.repos[repo_id].branches[revision].update(files)
        self.commits.append(Commit(repo_id, revision, message, files))
        oid = hashlib.sha1(body).hexdigest()
        return 200, {"commitUrl": f"{self.url}/{repo_id}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None}


def _handler(hub: LocalHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            hub.requests.append((self.command, self.path, self.headers.get("Authorization")))
            status, answer = hub.answer(self.command, self.path, body)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _serve

        def log_message(self, *args) -> None:  # quiet: tests read `hub.requests`
            pass

    return Handler
