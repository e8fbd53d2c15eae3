"""A fake Kubernetes API server for tests: exactly the part the kubernetes backend uses.

It is not Kubernetes. It serves, on 127.0.0.1, with a bearer token:

- ``/version``; SelfSubjectAccessReviews (allowed unless a test denies a
  permission); RuntimeClasses by name;
- pods in the namespaces it has: create (409 for a taken name, 422 for an
  invalid name or label, 404 for an unknown namespace), get, list and watch
  with a ``labelSelector`` of ``key=value`` terms, delete (grace period 0
  removes at once; a ``preconditions.uid`` that does not match is 409), and
  merge patches of labels and annotations;
- resourceVersions: one counter for every change; a watch replays what
  happened after the version it asks for, or answers an ``ERROR`` event with
  410 when that version is older than the history kept (:meth:`compact`);
- events, filtered by ``involvedObject`` fields;
- exec into a pod (the WebSocket channel protocol) through a
  :class:`~tests.kube_exec_server.FakeKubelet`, when it has one.

Pods go from ``Pending`` to ``Running`` as the kubelet starts them (at once
without a kubelet, unless ``hold_pending``); tests drive anything else —
``fail``, ``delete``, injected errors — and see what the backend does.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import re
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.kube_exec_server import PROTOCOLS, FakeKubelet, serve_exec

TOKEN = "fake-token"
DNS_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")


@dataclass
class Injected:
    """Answer ``status`` to the next ``times`` requests of ``method`` whose path matches."""

    method: str
    path: re.Pattern[str]
    status: int
    times: int = 1


@dataclass
class Watcher:
    selector: dict[str, str]
    queue: asyncio.Queue[dict[str, Any] | None] = field(default_factory=asyncio.Queue)


def status_object(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}  # fmt: skip


def answer(code: int, reason: str, message: str) -> web.Response:
    return web.json_response(status_object(code, reason, message), status=code)


REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
           409: "AlreadyExists", 410: "Expired", 422: "Invalid", 500: "InternalError"}  # fmt: skip


def parse_selector(text: str) -> dict[str, str]:
    terms = [term for term in text.split(",") if term]
    return dict(term.split("=", 1) for term in terms)


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


class FakeKubernetes:
    def __init__(
        self,
        *,
        namespaces: tuple[str, ...] = ("replroom-rooms",),
        kubelet: FakeKubelet | None = None,
        exec_protocols: tuple[str, ...] = PROTOCOLS,
    ) -> None:
        self.namespaces = set(namespaces)
        self.kubelet = kubelet
        self.exec_protocols = exec_protocols
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.runtime_classes: dict[str, str] = {"gvisor": "runsc"}
        self.denied: set[tuple[str, str, str]] = set()
        self.hold_pending = False
        self.on_create: Callable[[str], None] | None = None  # called with each new pod's name
        self.version = 100
        self.history: list[tuple[int, str, dict[str, Any]]] = []
        self.oldest = self.version  # watches from before this get 410
        self.injected: list[Injected] = []
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request
        self.watches_opened: list[str | None] = []  # the resourceVersion each watch asked for
        self._watchers: list[Watcher] = []
        self._kubelet_tasks: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self.url = ""

    # ----------------------------------------------------------- the server

    async def start(self) -> str:
        app = web.Application(middlewares=[self._middleware])
        pods = "/api/v1/namespaces/{namespace}/pods"
        app.router.add_get("/version", self._version)
        app.router.add_post("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", self._review)
        app.router.add_get("/apis/node.k8s.io/v1/runtimeclasses/{name}", self._runtime_class)
        app.router.add_get(pods, self._list_or_watch)
        app.router.add_post(pods, self._create)
        app.router.add_get(pods + "/{name}", self._get)
        app.router.add_delete(pods + "/{name}", self._delete)
        app.router.add_patch(pods + "/{name}", self._patch)
        app.router.add_get(pods + "/{name}/exec", self._exec)
        app.router.add_get("/api/v1/namespaces/{namespace}/events", self._events)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def close(self) -> None:
        self.end_watches()
        # Let the kubelet finish what it was asked (a cancelled pod stop would
        # leave its sandbox behind): pods start and stop in well under a minute.
        await asyncio.gather(*self._kubelet_tasks, return_exceptions=True)
        # The pods first: their processes end, and with them the exec handlers.
        if self.kubelet is not None:
            await self.kubelet.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def kubeconfig(self, directory: Path) -> Path:
        path = directory / "kubeconfig"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": TOKEN}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
            "current-context": "fake",
        }
        path.write_text(json.dumps(config))  # JSON is YAML
        return path

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return answer(401, "Unauthorized", "Unauthorized")
        for injected in self.injected:
            if (
                injected.times > 0
                and injected.method == request.method
                and (injected.path.search(request.path))
            ):
                injected.times -= 1
                reason = REASONS.get(injected.status, "")
                return answer(injected.status, reason, f"injected {injected.status}")
        result: web.StreamResponse = await handler(request)
        return result

    def inject(self, method: str, path: str, status: int, times: int = 1) -> None:
        self.injected.append(Injected(method, re.compile(path), status, times))

    # ---------------------------------------------------------- the changes

    def _bump(self, pod: dict[str, Any]) -> None:
        self.version += 1
        pod["metadata"]["resourceVersion"] = str(self.version)

    def _publish(self, kind: str, pod: dict[str, Any]) -> None:
        snapshot = copy.deepcopy(pod)
        self.history.append((self.version, kind, snapshot))
        for watcher in self._watchers:
            if matches(watcher.selector, snapshot["metadata"].get("labels") or {}):
                watcher.queue.put_nowait({"type": kind, "object": snapshot})

    def compact(self) -> None:
        """Forget the history: a watch from any version seen so far now gets 410 Gone."""
        self.history.clear()
        self.version += 1
        self.oldest = self.version

    def end_watches(self) -> None:
        """End every open watch, as the server does at its timeout."""
        for watcher in self._watchers:
            watcher.queue.put_nowait(None)

    def pod(self, name: str, namespace: str = "replroom-rooms") -> dict[str, Any]:
        return self.pods[namespace, name]

    def set_state(
        self, name: str, phase: str, state: dict[str, Any], *, reason: str = "",
        namespace: str = "replroom-rooms",
    ) -> None:  # fmt: skip
        """Move a pod to ``phase`` with its container in ``state`` (what a kubelet reports)."""
        pod = self.pods[namespace, name]
        status = pod["status"]
        status["phase"] = phase
        if reason:
            status["reason"] = reason
        container = {"name": "room", "state": state, "lastState": {}, "restartCount": 0}
        status["containerStatuses"] = [{**container, "ready": "running" in state}]
        self._bump(pod)
        self._publish("MODIFIED", pod)

    def fail(self, name: str, reason: str, exit_code: int = 137) -> None:
        """The pod's container ended (e.g. ``OOMKilled``): the pod is ``Failed``."""
        terminated = {"exitCode": exit_code, "reason": reason, "message": ""}
        self.set_state(name, "Failed", {"terminated": terminated})

    def add_event(self, name: str, reason: str, message: str = "") -> None:
        pod = self.pods["replroom-rooms", name]
        self.events.append({
            "metadata": {"name": f"{name}.{uuid.uuid4().hex[:8]}", "namespace": "replroom-rooms"},
            "involvedObject": {"kind": "Pod", "name": name, "namespace": "replroom-rooms",
                               "uid": pod["metadata"]["uid"]},
            "reason": reason, "message": message, "type": "Warning",
        })  # fmt: skip

    def delete(self, name: str, namespace: str = "replroom-rooms") -> None:
        """Delete a pod from outside (kubectl delete --force)."""
        pod = self.pods.pop((namespace, name))
        self._bump(pod)
        self._publish("DELETED", pod)
        if self.kubelet is not None:
            self._on_kubelet(self.kubelet.stop(pod["metadata"]["uid"]))

    def _on_kubelet(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._kubelet_tasks.add(task)
        task.add_done_callback(self._kubelet_tasks.discard)

    async def _start_pod(self, pod: dict[str, Any]) -> None:
        assert self.kubelet is not None
        name = pod["metadata"]["name"]
        try:
            await self.kubelet.run(pod)
        except Exception as error:
            waiting = {"waiting": {"reason": "CreateContainerError", "message": str(error)}}
            self.set_state(name, "Pending", waiting)
            return
        if (pod["metadata"]["namespace"], name) in self.pods:
            self.set_state(name, "Running", {"running": {"startedAt": "now"}})
        else:  # deleted while it started
            await self.kubelet.stop(pod["metadata"]["uid"])

    # ------------------------------------------------------------- handlers

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"major": "1", "minor": "33", "gitVersion": "v1.33.0-fake"})

    async def _review(self, request: web.Request) -> web.Response:
        review = await request.json()
        attributes = review["spec"]["resourceAttributes"]
        key = (attributes["verb"], attributes["resource"], attributes.get("subresource", ""))
        review["status"] = {"allowed": key not in self.denied}
        return web.json_response(review, status=201)

    async def _runtime_class(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.runtime_classes:
            return answer(404, "NotFound", f'runtimeclasses.node.k8s.io "{name}" not found')
        return web.json_response({"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
                                  "metadata": {"name": name},
                                  "handler": self.runtime_classes[name]})  # fmt: skip

    def _namespace(self, request: web.Request) -> str | None:
        namespace = request.match_info["namespace"]
        return namespace if namespace in self.namespaces else None

    async def _list_or_watch(self, request: web.Request) -> web.StreamResponse:
        namespace = request.match_info["namespace"]
        selector = parse_selector(request.query.get("labelSelector", ""))
        if request.query.get("watch") in ("true", "1"):
            return await self._watch(request, namespace, selector)
        items = [
            copy.deepcopy(pod)
            for (space, _), pod in self.pods.items()
            if space == namespace and matches(selector, pod["metadata"].get("labels") or {})
        ]
        return web.json_response({"kind": "PodList", "apiVersion": "v1", "items": items,
                                  "metadata": {"resourceVersion": str(self.version)}})  # fmt: skip

    async def _watch(
        self, request: web.Request, namespace: str, selector: dict[str, str]
    ) -> web.StreamResponse:
        asked = request.query.get("resourceVersion") or None
        self.watches_opened.append(asked)
        response = web.StreamResponse()
        response.content_type = "application/json"
        await response.prepare(request)
        if asked is not None and int(asked) < self.oldest:
            gone = status_object(410, "Expired", f"too old resource version: {asked}")
            await response.write(json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")
            return response
        watcher = Watcher(selector)
        since = int(asked) if asked is not None else self.version
        for version, kind, pod in self.history:
            if version > since and matches(selector, pod["metadata"].get("labels") or {}):
                watcher.queue.put_nowait({"type": kind, "object": pod})
        self._watchers.append(watcher)
        timeout = float(request.query.get("timeoutSeconds") or 3600)
        try:
            async with asyncio.timeout(timeout):
                async for event in _drain(watcher.queue):
                    await response.write(json.dumps(event).encode() + b"\n")
        except (TimeoutError, ConnectionError):
            pass
        finally:
            self._watchers.remove(watcher)
        return response

    async def _create(self, request: web.Request) -> web.Response:
        namespace = self._namespace(request)
        if namespace is None:
            return answer(
                404, "NotFound", f'namespaces "{request.match_info["namespace"]}" not found'
            )
        pod = await request.json()
        metadata = pod.setdefault("metadata", {})
        name = metadata.get("name", "")
        problems = []
        if not DNS_NAME.fullmatch(name) or len(name) > 253:
            problems.append(f"metadata.name: Invalid value: {name!r}")
        for key, value in (metadata.get("labels") or {}).items():
            if not LABEL_VALUE.fullmatch(str(value)) or len(str(value)) > 63:
                problems.append(f"metadata.labels: Invalid value: {value!r} ({key})")
        if not pod.get("spec", {}).get("containers"):
            problems.append("spec.containers: Required value")
        if problems:
            return answer(422, "Invalid", f'Pod "{name}" is invalid: ' + "; ".join(problems))
        if (namespace, name) in self.pods:
            return answer(409, "AlreadyExists", f'pods "{name}" already exists')
        metadata.update(namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp="now")
        pod["status"] = {"phase": "Pending"}
        self.pods[namespace, name] = pod
        self._bump(pod)
        self._publish("ADDED", pod)
        if self.on_create is not None:
            self.on_create(name)
        if self.kubelet is not None:
            self._on_kubelet(self._start_pod(pod))
        elif not self.hold_pending:
            self.set_state(name, "Running", {"running": {"startedAt": "now"}}, namespace=namespace)
        return web.json_response(self.pods[namespace, name], status=201)

    def _find(self, request: web.Request) -> dict[str, Any] | None:
        return self.pods.get((request.match_info["namespace"], request.match_info["name"]))

    async def _get(self, request: web.Request) -> web.Response:
        pod = self._find(request)
        if pod is None:
            return answer(404, "NotFound", f'pods "{request.match_info["name"]}" not found')
        return web.json_response(pod)

    async def _delete(self, request: web.Request) -> web.Response:
        pod = self._find(request)
        name = request.match_info["name"]
        if pod is None:
            return answer(404, "NotFound", f'pods "{name}" not found')
        options = await request.json() if request.can_read_body else {}
        wanted_uid = (options.get("preconditions") or {}).get("uid")
        if wanted_uid is not None and wanted_uid != pod["metadata"]["uid"]:
            return answer(
                409, "Conflict", f"Precondition failed: UID in precondition: {wanted_uid}"
            )
        grace = options.get("gracePeriodSeconds", request.query.get("gracePeriodSeconds"))
        if str(grace) != "0":
            return answer(400, "BadRequest", "this fake deletes with gracePeriodSeconds=0 only")
        self.delete(name, request.match_info["namespace"])
        return web.json_response(pod)

    async def _patch(self, request: web.Request) -> web.Response:
        pod = self._find(request)
        if pod is None:
            return answer(404, "NotFound", f'pods "{request.match_info["name"]}" not found')
        if request.content_type != "application/merge-patch+json":
            return answer(415, "UnsupportedMediaType", request.content_type)
        patch = (await request.json()).get("metadata") or {}
        for part in ("labels", "annotations"):
            pod["metadata"].setdefault(part, {}).update(patch.get(part) or {})
        self._bump(pod)
        self._publish("MODIFIED", pod)
        return web.json_response(pod)

    async def _events(self, request: web.Request) -> web.Response:
        wanted = parse_selector(request.query.get("fieldSelector", ""))
        items = [
            event for event in self.events
            if all(str(event.get("involvedObject", {}).get(key.removeprefix("involvedObject.")))
                   == value for key, value in wanted.items())
        ]  # fmt: skip
        return web.json_response({"kind": "EventList", "items": items, "metadata": {}})

    async def _exec(self, request: web.Request) -> web.StreamResponse:
        pod = self._find(request)
        if pod is None:
            return answer(404, "NotFound", f'pods "{request.match_info["name"]}" not found')
        sandbox = self.kubelet.sandboxes.get(pod["metadata"]["uid"]) if self.kubelet else None
        if pod["status"].get("phase") != "Running" or sandbox is None:
            return answer(400, "BadRequest", "container room is not running")
        return await serve_exec(request, sandbox, self.exec_protocols)


async def _drain(queue: asyncio.Queue[dict[str, Any] | None]) -> AsyncIterator[dict[str, Any]]:
    while (event := await queue.get()) is not None:
        yield event


@contextlib.asynccontextmanager
async def fake_kubernetes(**kwargs: Any) -> AsyncIterator[FakeKubernetes]:
    fake = FakeKubernetes(**kwargs)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()
