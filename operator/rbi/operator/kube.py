"""A small async Kubernetes API client over aiohttp: JSON in, JSON out, typed errors.

kopf owns the watches; this client does the few writes and reads the handlers need, with
the same credentials kopf logged in with. Everything runs on the operator's event loop,
so a thousand resources never need a thousand threads.
"""

from __future__ import annotations

import base64
import contextlib
import ssl
import tempfile
from collections.abc import Mapping
from typing import Any

import aiohttp
import kopf

from rbi.k8s.manifests import GROUP, PLURAL, VERSION


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message

    @property
    def transient(self) -> bool:
        return self.status >= 500 or self.status in (408, 429)


def bts_path(namespace: str, name: str | None = None, *, status: bool = False) -> str:
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
    if name:
        path += f"/{name}"
        if status:
            path += "/status"
    return path


def job_path(namespace: str, name: str | None = None) -> str:
    return f"/apis/batch/v1/namespaces/{namespace}/jobs" + (f"/{name}" if name else "")


def configmap_path(namespace: str, name: str | None = None) -> str:
    return f"/api/v1/namespaces/{namespace}/configmaps" + (f"/{name}" if name else "")


def pod_path(namespace: str, name: str | None = None) -> str:
    return f"/api/v1/namespaces/{namespace}/pods" + (f"/{name}" if name else "")


def netpol_path(namespace: str, name: str | None = None) -> str:
    return f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies" + (f"/{name}" if name else "")


def _materialise(data: str | bytes | None, path: Any) -> str | None:
    if path:
        return str(path)
    if not data:
        return None
    raw = data if isinstance(data, bytes) else data.encode()
    with contextlib.suppress(ValueError):
        raw = base64.b64decode(raw, validate=True)
    handle = tempfile.NamedTemporaryFile(delete=False, suffix=".pem")  # noqa: SIM115 - lives as long as the client
    handle.write(raw)
    handle.close()
    return handle.name


class KubeApi:
    """The API server at `info.server`, authenticated like kopf."""

    def __init__(self, info: kopf.ConnectionInfo, *, limit: int = 32) -> None:
        self.server = info.server.rstrip("/")
        headers = {"Accept": "application/json"}
        if info.token:
            headers["Authorization"] = f"{info.scheme or 'Bearer'} {info.token}"
        auth = aiohttp.BasicAuth(info.username, info.password or "") if info.username else None
        context: ssl.SSLContext | bool = not info.insecure
        if self.server.startswith("https") and not info.insecure:
            context = ssl.create_default_context(cafile=_materialise(info.ca_data, info.ca_path))
            cert = _materialise(info.certificate_data, info.certificate_path)
            if cert:
                context.load_cert_chain(cert, _materialise(info.private_key_data, info.private_key_path))
        self._session = aiohttp.ClientSession(
            headers=headers, auth=auth, connector=aiohttp.TCPConnector(ssl=context, limit=limit),
            timeout=aiohttp.ClientTimeout(total=60))

    async def close(self) -> None:
        await self._session.close()

    async def _call(self, method: str, path: str, *, body: Any = None, params: Mapping[str, str] | None = None,
                    content_type: str = "application/json", text: bool = False) -> Any:
        headers = {"Content-Type": content_type} if body is not None else {}
        try:
            async with self._session.request(method, self.server + path, json=body, params=params,
                                             headers=headers) as response:
                if response.status >= 400:
                    detail = (await response.text())[:500]
                    raise ApiError(response.status, detail)
                if text:
                    return await response.text(errors="replace")
                return await response.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise ApiError(503, f"{method} {path}: {exc!r}") from exc

    async def get(self, path: str) -> dict[str, Any] | None:
        try:
            result = await self._call("GET", path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return result if isinstance(result, dict) else None

    async def list(self, path: str, *, labels: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        """Items matching `labels`; filtered here as well, whatever the server did with the selector."""
        params = {"labelSelector": ",".join(f"{k}={v}" for k, v in labels.items())} if labels else None
        result = await self._call("GET", path, params=params)
        items = result.get("items") if isinstance(result, dict) else None
        found = [i for i in items or [] if isinstance(i, dict)]
        if labels:
            found = [i for i in found
                     if all(((i.get("metadata") or {}).get("labels") or {}).get(k) == v for k, v in labels.items())]
        return found

    async def create(self, path: str, body: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create, or find the one that exists already (False): a rerun never makes a second one."""
        try:
            return await self._call("POST", path, body=dict(body)), True
        except ApiError as exc:
            if exc.status != 409:
                raise
        existing = await self.get(f"{path}/{body['metadata']['name']}")
        if existing is None:
            raise ApiError(409, f"{body['metadata']['name']} exists but cannot be read")
        return existing, False

    async def patch(self, path: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
        try:
            result = await self._call("PATCH", path, body=dict(body), content_type="application/merge-patch+json")
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return result if isinstance(result, dict) else None

    async def delete(self, path: str) -> bool:
        try:
            await self._call("DELETE", path, body={"propagationPolicy": "Background"})
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def log(self, namespace: str, pod: str, container: str, *, limit_bytes: int = 8 * 2**20) -> str | None:
        try:
            result = await self._call("GET", f"{pod_path(namespace, pod)}/log",
                                      params={"container": container, "limitBytes": str(limit_bytes)}, text=True)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return str(result)
