"""A small synchronous REST client for one agent (used by the CLI and by scripts)."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class HttpClient:
    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def request(self, method: str, path: str, body=None, query: dict | None = None,
                raw: bool = False):
        url = self.url + path
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as exc:
            payload = exc.read()
            try:
                err = json.loads(payload)["error"]
                raise ApiError(exc.code, err.get("code", "error"), err.get("message", "")) from None
            except (ValueError, KeyError, TypeError):
                raise ApiError(exc.code, "http_error", payload.decode(errors="replace")[:200]) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ApiError(0, "unreachable", f"cannot reach {self.url}: {reason}") from None
        return payload.decode(errors="replace") if raw else json.loads(payload)

    def submit(self, spec: dict) -> dict:
        return self.request("POST", "/api/workloads", spec)

    def list(self, status: str | None = None, wtype: str | None = None) -> dict:
        return self.request("GET", "/api/workloads", query={"status": status, "type": wtype})

    def get(self, workload_id: str) -> dict:
        return self.request("GET", f"/api/workloads/{urllib.parse.quote(workload_id)}")

    def stop(self, workload_id: str) -> dict:
        return self.request("POST", f"/api/workloads/{urllib.parse.quote(workload_id)}/stop")

    def scale(self, set_id: str, replicas: int) -> dict:
        return self.request("POST", f"/api/workloads/{urllib.parse.quote(set_id)}/scale",
                            {"replicas": replicas})

    def delete(self, workload_id: str) -> dict:
        return self.request("DELETE", f"/api/workloads/{urllib.parse.quote(workload_id)}")

    def logs(self, workload_id: str, tail: int = 100) -> str:
        return self.request("GET", f"/api/workloads/{urllib.parse.quote(workload_id)}/logs",
                            query={"tail": tail, "format": "text"}, raw=True)

    def resources(self) -> dict:
        return self.request("GET", "/api/resources")

    def nodes(self) -> dict:
        return self.request("GET", "/api/nodes")

    def health(self) -> dict:
        return self.request("GET", "/api/health")
