"""A small Python client for modelkiln's management API (inference speaks plain OIP: any
KServe v2 / Triton HTTP client works)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx


class KilnError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class KilnClient:
    def __init__(self, url: str, key: str, timeout: float = 120.0) -> None:
        self._http = httpx.Client(
            base_url=url.rstrip("/"),
            timeout=timeout,
            headers={"Authorization": f"Bearer {key}"} if key else {},
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> KilnClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _check(self, r: httpx.Response, *ok: int) -> Any:
        if r.status_code not in (ok or (200,)):
            try:
                message = r.json().get("error", r.text)
            except ValueError:
                message = r.text
            raise KilnError(r.status_code, str(message))
        return r.json()

    def create_model(self, name: str, description: str = "") -> dict[str, Any]:
        r = self._http.post("/v1/models", json={"name": name, "description": description})
        return dict(self._check(r, 201))

    def get_model(self, name: str) -> dict[str, Any]:
        return dict(self._check(self._http.get(f"/v1/models/{name}")))

    def push_model(
        self,
        name: str,
        path: Path,
        fmt: str,
        *,
        signature: Any = None,
        config: Any = None,
        description: str = "",
    ) -> dict[str, Any]:
        """Create the model if it does not exist, then upload `path` as its next version."""
        r = self._http.post("/v1/models", json={"name": name, "description": description})
        if r.status_code != 409:
            self._check(r, 201)
        form = {"format": fmt}
        if signature is not None:
            form["signature"] = json.dumps(signature)
        if config is not None:
            form["config"] = json.dumps(config)
        with path.open("rb") as f:
            r = self._http.post(f"/v1/models/{name}/versions", data=form, files={"file": (path.name, f)})
        return dict(self._check(r, 201))

    def set_alias(self, name: str, alias: str, version: int) -> dict[str, Any]:
        r = self._http.put(f"/v1/models/{name}/aliases/{alias}", json={"version": version})
        return dict(self._check(r))

    def infer(
        self, name: str, inputs: list[dict[str, Any]], version: str | None = None, **extra: Any
    ) -> dict[str, Any]:
        path = f"/v2/models/{name}" + (f"/versions/{version}" if version else "") + "/infer"
        return dict(self._check(self._http.post(path, json={"inputs": inputs, **extra})))
