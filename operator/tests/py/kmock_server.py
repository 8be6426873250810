"""An HTTP Kubernetes API emulator for the controller-wiring test: PyPI kmock 0.8 plus the small
layer kube-rs needs, which kmock does not do by itself:

- resourceVersion, uid, creationTimestamp and generation stamping (kube-rs watchers and the
  generation predicate rely on them);
- create-on-apply: a server-side-apply PATCH of a missing object creates it;
- PUT (replace), with resourceVersion preconditions (leader-election Leases use it);
- the API server's Status reason "NotFound" on 404 (kube-rs' get_opt() relies on it).

It does NOT emulate server-side-apply field ownership, garbage collection, defaulting or schema
validation: objects are merged as plain JSON.

Usage: kmock_server.py REQUEST_LOG -> prints "URLS <operator url> <test url>" once listening, logs
"PORT METHOD PATH QUERY" of every request to REQUEST_LOG, serves until stdin closes.
"""
import asyncio
import datetime
import json
import sys
import uuid

import attrs
import kmock
from kmock._internal import enums

RESOURCES = [
    "ordo.dev/v1alpha1/seqclusters",
    "ordo.dev/v1alpha1/workdividers",
    "apps/v1/statefulsets",
    "v1/services",
    "v1/configmaps",
    "v1/secrets",
    "policy/v1/poddisruptionbudgets",
    "networking.k8s.io/v1/networkpolicies",
    "events.k8s.io/v1/events",
    "coordination.k8s.io/v1/leases",
]


def _set_action(request, action) -> None:
    # kmock matches reactions against the very request object it recorded, so the parsed action is
    # corrected in place (the Request class is frozen) rather than on a copy.
    object.__setattr__(request, "action", action)


@attrs.define(kw_only=True)
class StampingEmulator(kmock.KubernetesEmulator):
    log_path: str = ""
    _rv: int = 0

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _stored(self, request):
        key = (request.resource, request.namespace, request.name)
        if key in self.objects and not self.objects[key].deleted:
            return self.objects[key]
        return None

    async def _handle(self, request):
        with open(self.log_path, "a") as log:
            log.write(f"{request.url.port} {request.method.value} {request.url.path} {request.url.query_string}\n")
        if request.resource is not None and request.method in (enums.method.PATCH, enums.method.PUT):
            stored = self._stored(request) if request.name else None
            data = request.data if isinstance(request.data, dict) else {}
            meta = data.setdefault("metadata", {})
            if stored is None and request.subresource is None and (
                request.method == enums.method.PUT
                or "apply-patch" in request.headers.get("Content-Type", "")
            ):
                _set_action(request, enums.action.CREATE)
            elif stored is not None:
                current = stored.get("metadata", {})
                if request.method == enums.method.PUT:
                    expected = meta.get("resourceVersion")
                    if expected and expected != current.get("resourceVersion"):
                        return await self._render_error(kmock.KubernetesError(
                            status=409, reason="Conflict", message="the object has been modified"))
                    _set_action(request, enums.action.UPDATE)
                for k in ("uid", "creationTimestamp"):
                    meta[k] = current.get(k)
                generation = current.get("generation", 1)
                if request.subresource is None and "spec" in data and data["spec"] != stored.get("spec"):
                    generation += 1
                meta["generation"] = generation
                meta["resourceVersion"] = self._next_rv()
        if request.action == enums.action.CREATE and isinstance(request.data, dict):
            meta = request.data.setdefault("metadata", {})
            meta.setdefault("namespace", request.namespace)
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            meta["generation"] = 1
            meta["resourceVersion"] = self._next_rv()
        return await super()._handle(request)

    async def _render_error(self, exc):
        # kmock's own reasons ("Object Not Found", ...) are not the API server's: clients such as
        # kube-rs' get_opt() key on reason "NotFound".
        if isinstance(exc, kmock.KubernetesError) and exc.status == 404:
            exc = kmock.KubernetesError(status=404, reason="NotFound", message=exc.message)
        return await super()._render_error(exc)

    async def _serve_list(self, request):
        listed = await super()._serve_list(request)
        listed["metadata"] = {"resourceVersion": str(self._rv)}
        return listed


async def main() -> None:
    emulator = StampingEmulator(log_path=sys.argv[1])
    for r in RESOURCES:
        emulator.resources[r] = {"namespaced": True}
    emulator.resources["apiextensions.k8s.io/v1/customresourcedefinitions"] = {"namespaced": False}
    # Two entry points to one emulator: the operator uses the first, the test's own requests
    # (creating objects, polling) the second, so the request log tells them apart.
    async with emulator, kmock.Server(emulator) as operator, kmock.Server(emulator) as test:
        print(f"URLS {operator.url} {test.url}", flush=True)
        # Serve until the test closes our stdin.
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


if __name__ == "__main__":
    asyncio.run(main())
