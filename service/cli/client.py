"""A small Python client for modelkiln's management and fine-tuning API (inference speaks plain
OIP: any KServe v2 / Triton HTTP client works)."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import httpx

from service.cli.bundle_pack import pack_directory

TERMINAL = ("succeeded", "failed", "cancelled")


Progress = Callable[[int], None]  # called with each chunk's size as an upload is sent


class KilnError(RuntimeError):
    """The server answered with an error: its HTTP status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


DEFAULT_TIMEOUT_S = 120.0  # any one call
# a dry run loads the model and times a training step on the server: it may take up to the
# server's limit for that check (service/finetune/jobs.py: CAUSAL_CHECK_S, 600 s), and more
DRY_RUN_TIMEOUT_S = 900.0


class Unreachable(RuntimeError):
    """No connection to the server at all (refused, unknown host, connecting timed out)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach {url} ({reason})")
        self.url = url


class NoAnswer(RuntimeError):
    """Connected, but the server's answer did not come within the client's timeout."""

    def __init__(self, url: str, timeout_s: float | None) -> None:
        waited = f" {timeout_s:g} s" if timeout_s else ""
        super().__init__(
            f"timed out after{waited} waiting for {url} to answer (the server may still be working "
            "on it); wait longer with --timeout SECONDS or $KILN_TIMEOUT",
        )
        self.url = url


def _reason(exc: httpx.TransportError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return re.sub(r"^\[Errno -?\d+\]\s*", "", text).strip().lower() or "connection failed"


def error_text(body: object) -> str | None:
    """The message of an error body in either shape the server writes: its own
    `{"error": "...", "code"}`, or OpenAI's `{"error": {"message", "type", "param", "code"}}` on
    the OpenAI-compatible routes (the field at fault added when the message does not name it).
    None for a body in neither shape."""
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    if isinstance(error, str) and error:
        return error
    if isinstance(error, dict) and isinstance(error.get("message"), str) and error["message"]:
        message, param = str(error["message"]), error.get("param")
        if isinstance(param, str) and param and param not in message:
            message += f" (param: {param})"
        return message
    return None


def _read_timeout(exc: httpx.TimeoutException) -> float | None:
    try:
        value = exc.request.extensions.get("timeout", {}).get("read")
    except RuntimeError:  # no request attached
        return None
    return float(value) if isinstance(value, int | float) else None


def _error_message(r: httpx.Response) -> str:
    """The server's error message; for anything else (a proxy's HTML page, a JSON body of
    another shape), its short text or the reason phrase."""
    try:
        text = error_text(r.json())
    except ValueError:
        text = None
    if text is not None:
        return text
    short = " ".join(r.text.split())
    return short if short and len(short) <= 200 and "<" not in short else r.reason_phrase or "error"


def _of(tenant: str | None) -> dict[str, str]:
    """The query that names another tenant (admin keys only)."""
    return {"tenant": tenant} if tenant else {}


class _Counted:
    """A binary file whose reads report their size (the upload progress bar)."""

    def __init__(self, f: IO[bytes], progress: Progress) -> None:
        self._f, self._progress = f, progress

    def read(self, size: int = -1) -> bytes:
        chunk = self._f.read(size)
        self._progress(len(chunk))
        return chunk

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


class _Http(httpx.Client):
    """httpx.Client that raises Unreachable instead of httpx's transport errors."""

    def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        url = str(self.base_url).rstrip("/")
        try:
            return super().send(request, **kwargs)
        except (httpx.ReadTimeout, httpx.WriteTimeout) as e:  # connected: the answer is late
            raise NoAnswer(url, _read_timeout(e)) from None
        except httpx.TransportError as e:
            raise Unreachable(url, _reason(e)) from None


class KilnClient:
    """`timeout`: seconds to wait for any one answer; None: DEFAULT_TIMEOUT_S, and
    DRY_RUN_TIMEOUT_S for a dry run (which loads the model on the server)."""

    def __init__(
        self, url: str, key: str, timeout: float | None = None, transport: httpx.BaseTransport | None = None
    ) -> None:
        self._timeout = timeout
        self._http = _Http(
            base_url=url.rstrip("/"),
            timeout=timeout or DEFAULT_TIMEOUT_S,
            headers={"Authorization": f"Bearer {key}"} if key else {},
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> KilnClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _check(self, r: httpx.Response, *ok: int) -> Any:
        if r.status_code not in (ok or (200,)):
            raise KilnError(r.status_code, _error_message(r))
        return r.json()

    def create_model(self, name: str, description: str = "") -> dict[str, Any]:
        r = self._http.post("/v1/models", json={"name": name, "description": description})
        return dict(self._check(r, 201))

    def get_model(self, name: str) -> dict[str, Any]:
        return dict(self._check(self._http.get(f"/v1/models/{name}")))

    def list_models(self) -> list[dict[str, Any]]:
        return list(self._check(self._http.get("/v1/models"))["data"])

    def push_model(
        self,
        name: str,
        path: Path,
        fmt: str,
        *,
        signature: Any = None,
        config: Any = None,
        description: str = "",
        progress: Callable[[int], Progress] | None = None,
    ) -> dict[str, Any]:
        """Upload `path` (a file, or a directory packed as a tar bundle) as the model's next
        version; the model is created with it, in the same request, if it does not exist, so a
        refused upload leaves nothing behind. `progress(total_bytes)` gives the per-chunk callback."""
        form = {"format": fmt, "create": "true", "description": description}
        if signature is not None:
            form["signature"] = json.dumps(signature)
        if config is not None:
            form["config"] = json.dumps(config)
        packed = pack_directory(path) if path.is_dir() else None
        try:
            upload = packed or path
            filename = f"{path.name}.tar" if packed else path.name
            r = self._upload(f"/v1/models/{name}/versions", upload, filename, form, progress)
        finally:
            if packed is not None:
                packed.unlink(missing_ok=True)
        return dict(self._check(r, 201))

    def _upload(
        self,
        url: str,
        path: Path,
        filename: str,
        form: dict[str, str],
        progress: Callable[[int], Progress] | None,
    ) -> httpx.Response:
        with path.open("rb") as f:
            body: Any = _Counted(f, progress(path.stat().st_size)) if progress else f
            return self._http.post(url, data=form, files={"file": (filename, body)})

    def set_alias(self, name: str, alias: str, version: int) -> dict[str, Any]:
        r = self._http.put(f"/v1/models/{name}/aliases/{alias}", json={"version": version})
        return dict(self._check(r))

    def infer(
        self, name: str, inputs: list[dict[str, Any]], version: str | None = None, **extra: Any
    ) -> dict[str, Any]:
        path = f"/v2/models/{name}" + (f"/versions/{version}" if version else "") + "/infer"
        return dict(self._check(self._http.post(path, json={"inputs": inputs, **extra})))

    def get_version(self, name: str, version: str | int) -> dict[str, Any]:
        return dict(self._check(self._http.get(f"/v1/models/{name}/versions/{version}")))

    def usage(
        self, start: str | None = None, end: str | None = None, group_by: str = "model"
    ) -> dict[str, Any]:
        params = {"group_by": group_by, **({"from": start} if start else {}), **({"to": end} if end else {})}
        return dict(self._check(self._http.get("/v1/usage", params=params)))

    # keys and tenants (a `manage` key: its own tenant's keys; `admin`: any tenant's) -------------
    def create_key(self, scopes: list[str], *, tenant: str | None = None, name: str = "") -> dict[str, Any]:
        """A key with at most this key's power; the answer holds the secret, shown only here."""
        body: dict[str, Any] = {"scopes": scopes, "name": name, **({"tenant": tenant} if tenant else {})}
        return dict(self._check(self._http.post("/v1/keys", json=body), 201))

    def list_keys(self, tenant: str | None = None) -> list[dict[str, Any]]:
        return list(self._check(self._http.get("/v1/keys", params=_of(tenant)))["data"])

    def revoke_key(self, key_id: int, tenant: str | None = None) -> dict[str, Any]:
        return dict(self._check(self._http.delete(f"/v1/keys/{key_id}", params=_of(tenant))))

    def rotate_key(
        self, key_id: int, overlap_s: int | None = None, tenant: str | None = None
    ) -> dict[str, Any]:
        body = {"overlap_s": overlap_s} if overlap_s is not None else None
        r = self._http.post(f"/v1/keys/{key_id}/rotate", json=body, params=_of(tenant))
        return dict(self._check(r, 201))

    def create_tenant(self, name: str) -> dict[str, Any]:
        return dict(self._check(self._http.post("/v1/tenants", json={"name": name}), 201))

    def list_tenants(self) -> list[dict[str, Any]]:
        return list(self._check(self._http.get("/v1/tenants"))["data"])

    # fine-tuning: files --------------------------------------------------------------------------
    def upload_file(
        self, path: Path, purpose: str = "fine-tune", progress: Callable[[int], Progress] | None = None
    ) -> dict[str, Any]:
        """Upload a JSONL or CSV dataset; a bad one raises KilnError 422 naming lines and fields."""
        path = Path(path)
        return dict(
            self._check(self._upload("/v1/files", path, path.name, {"purpose": purpose}, progress), 201)
        )

    def list_files(self) -> list[dict[str, Any]]:
        return list(self._check(self._http.get("/v1/files"))["data"])

    def get_file(self, file_id: str) -> dict[str, Any]:
        return dict(self._check(self._http.get(f"/v1/files/{file_id}")))

    def delete_file(self, file_id: str) -> dict[str, Any]:
        return dict(self._check(self._http.delete(f"/v1/files/{file_id}")))

    # fine-tuning: jobs ---------------------------------------------------------------------------
    def create_job(
        self, *, dry_run: bool = False, idempotency_key: str | None = None, **body: Any
    ) -> dict[str, Any]:
        """POST /v1/fine_tuning/jobs with `body` (model, training_file, hyperparameters, ...)."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        params = {"dry_run": "true"} if dry_run else {}
        timeout = self._timeout or (DRY_RUN_TIMEOUT_S if dry_run else DEFAULT_TIMEOUT_S)
        r = self._http.post(
            "/v1/fine_tuning/jobs", json=body, params=params, headers=headers, timeout=timeout
        )
        return dict(self._check(r))

    def get_job(self, job_id: str) -> dict[str, Any]:
        return dict(self._check(self._http.get(f"/v1/fine_tuning/jobs/{job_id}")))

    def list_jobs(self, after: str | None = None, limit: int = 20) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit, **({"after": after} if after else {})}
        return dict(self._check(self._http.get("/v1/fine_tuning/jobs", params=params)))

    def _action(self, job_id: str, action: str) -> dict[str, Any]:
        return dict(self._check(self._http.post(f"/v1/fine_tuning/jobs/{job_id}/{action}")))

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        return self._action(job_id, "cancel")

    def pause_job(self, job_id: str) -> dict[str, Any]:
        return self._action(job_id, "pause")

    def resume_job(self, job_id: str) -> dict[str, Any]:
        return self._action(job_id, "resume")

    def events(self, job_id: str, after: str | None = None, limit: int = 100) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit, **({"after": after} if after else {})}
        return dict(self._check(self._http.get(f"/v1/fine_tuning/jobs/{job_id}/events", params=params)))

    def checkpoints(self, job_id: str) -> dict[str, Any]:
        return dict(self._check(self._http.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints")))

    def promote_checkpoint(self, job_id: str, checkpoint_id: str) -> dict[str, Any]:
        """The checkpoint's weights as the next version of the job's model (`manage`)."""
        url = f"/v1/fine_tuning/jobs/{job_id}/checkpoints/{checkpoint_id}/promote"
        return dict(self._check(self._http.post(url), 201))

    def download_version(self, name: str, version: str | int, out: Any) -> tuple[str, str]:
        """Stream a version's artifact into the binary file `out`: (the sha256 the server
        announced as the ETag, the sha256 of the bytes received)."""
        digest = hashlib.sha256()
        with self._http.stream("GET", f"/v1/models/{name}/versions/{version}/content") as r:
            if r.status_code >= 400:
                r.read()
                self._check(r)
            for chunk in r.iter_bytes():
                digest.update(chunk)
                out.write(chunk)
            return str(r.headers.get("etag", "")).strip('"'), digest.hexdigest()

    def metrics(self, job_id: str) -> dict[str, Any]:
        return dict(self._check(self._http.get(f"/v1/fine_tuning/jobs/{job_id}/metrics")))

    def wait_job(
        self,
        job_id: str,
        *,
        timeout: float = 3600.0,
        poll_s: float = 0.5,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll the job until it finishes (or `timeout` passes); returns the last job object."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get_job(job_id)
            if on_update is not None:
                on_update(job)
            if job["status"] in TERMINAL or time.monotonic() > deadline:
                return job
            time.sleep(poll_s)

    # sweeps --------------------------------------------------------------------------------------
    def create_sweep(self, *, idempotency_key: str | None = None, **body: Any) -> dict[str, Any]:
        """POST /v1/fine_tuning/sweeps with `body` (model, training_file, search, space, ...)."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return dict(self._check(self._http.post("/v1/fine_tuning/sweeps", json=body, headers=headers)))

    def get_sweep(self, sweep_id: str) -> dict[str, Any]:
        return dict(self._check(self._http.get(f"/v1/fine_tuning/sweeps/{sweep_id}")))

    def list_sweeps(self, after: str | None = None, limit: int = 20) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit, **({"after": after} if after else {})}
        return dict(self._check(self._http.get("/v1/fine_tuning/sweeps", params=params)))

    def cancel_sweep(self, sweep_id: str) -> dict[str, Any]:
        return dict(self._check(self._http.post(f"/v1/fine_tuning/sweeps/{sweep_id}/cancel")))

    def promote_sweep(self, sweep_id: str, alias: str) -> dict[str, Any]:
        r = self._http.post(f"/v1/fine_tuning/sweeps/{sweep_id}/promote", json={"alias": alias})
        return dict(self._check(r))

    def wait_sweep(
        self,
        sweep_id: str,
        *,
        timeout: float = 24 * 3600.0,
        poll_s: float = 1.0,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll the sweep until it finishes (and its promotion, if asked for, is decided)."""
        deadline = time.monotonic() + timeout
        while True:
            sweep = self.get_sweep(sweep_id)
            if on_update is not None:
                on_update(sweep)
            settled = sweep["status"] in TERMINAL and not (
                sweep["status"] == "succeeded" and sweep.get("promote") and sweep.get("promotion") is None
            )
            if settled or time.monotonic() > deadline:
                return sweep
            time.sleep(poll_s)
