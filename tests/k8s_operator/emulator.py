"""The API server for the operator tests: kmock's KubernetesEmulator plus what a real one adds.

kmock 0.8 stores objects as given; a real API server also assigns uid, resourceVersion,
generation and creationTimestamp, which the operator relies on (ownerReferences need the
uid, kopf needs resourceVersions). This subclass adds exactly those, nothing more.
"""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp.web
import attrs
import kmock
from kmock import KubernetesEmulator

RESOURCES: dict[str, dict[str, Any]] = {
    "rbi.dev/v1alpha1/backteststrategies": {"kind": "BacktestStrategy", "namespaced": True,
                                            "subresources": {"status"}, "shortnames": {"bts"}},
    "batch/v1/jobs": {"kind": "Job", "namespaced": True, "subresources": {"status"}},
    "v1/pods": {"kind": "Pod", "namespaced": True, "subresources": {"status", "log"}},
    "v1/configmaps": {"kind": "ConfigMap", "namespaced": True},
    "v1/namespaces": {"kind": "Namespace", "namespaced": False},
    "v1/events": {"kind": "Event", "namespaced": True},
    "networking.k8s.io/v1/networkpolicies": {"kind": "NetworkPolicy", "namespaced": True},
    "apiextensions.k8s.io/v1/customresourcedefinitions": {"kind": "CustomResourceDefinition", "namespaced": False},
}
VERBS = {"get", "list", "watch", "create", "patch", "update", "delete"}


@attrs.define(kw_only=True)
class ApiServer(KubernetesEmulator):
    _versions: Any = attrs.field(factory=lambda: itertools.count(1), init=False)
    # kmock keeps every request for assertions and matches each new one against that history,
    # which makes a request cost O(requests so far). These tests never assert on old requests,
    # so a request leaves the history once it is answered (watches stay while they stream).
    forget_requests: bool = True

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for key, info in RESOURCES.items():
            self.resources[key] = kmock.ResourceInfo(verbs=VERBS, **info)

    async def _serve_list(self, request: kmock.Request) -> Any:
        """Lists honour `labelSelector` equalities (k=v,k2=v2), as a real API server does."""
        result = await super()._serve_list(request)
        selector = dict(request.params or {}).get("labelSelector")
        if selector and isinstance(result, dict):
            wanted = dict(part.split("=", 1) for part in selector.split(",") if "=" in part)
            result["items"] = [item for item in result["items"]
                               if all(((item.get("metadata") or {}).get("labels") or {}).get(k) == v
                                      for k, v in wanted.items())]
        return result

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        data = request.data
        if request.resource is not None and isinstance(data, dict):
            version = str(next(self._versions))
            if request.action == kmock.action.CREATE:
                meta = data.setdefault("metadata", {})
                if not meta.get("name") and meta.get("generateName"):
                    meta["name"] = f"{meta['generateName']}{uuid.uuid4().hex[:8]}"
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("creationTimestamp", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
                meta.setdefault("generation", 1)
                meta["resourceVersion"] = version
            elif request.action == kmock.action.UPDATE:
                meta = data.setdefault("metadata", None) or {}
                data["metadata"] = meta
                meta["resourceVersion"] = version
                if "spec" in data and request.subresource is None and request.name is not None:
                    key = (request.resource, request.namespace, request.name)
                    current = self.objects.get(key)
                    if current is not None and not current.deleted and current.get("spec") != data["spec"]:
                        meta["generation"] = int((current.get("metadata") or {}).get("generation") or 1) + 1
                if request.subresource == "status":
                    data.pop("spec", None)
        try:
            return await super()._handle(request)
        finally:
            if self.forget_requests:
                for index in range(len(self._requests) - 1, -1, -1):
                    if self._requests[index] is request:
                        del self._requests[index]
                        break
