"""Reaching the Kubernetes API server: JSON requests, watch streams, exec WebSockets.

kubernetes_asyncio loads the configuration (a kubeconfig file with its
credential plugins and token refreshes, or the pod's service account) and
says how to authenticate; the requests themselves go through one aiohttp
session of ours, with plain JSON in and out: the backend reads a handful of
fields, and the generated models would cost a copy of every pod on every
watch event.
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from kubernetes_asyncio.client import Configuration
from kubernetes_asyncio.config import ConfigException, load_incluster_config, load_kube_config

# Seconds a request may take; watches and exec sessions have none.
REQUEST_TIMEOUT = 30.0
CONNECT_TIMEOUT = 10.0
# A pod's JSON can be larger than aiohttp's default line buffer (64 KiB).
READ_BUFFER = 2**21

Query = Sequence[tuple[str, str]]


class ApiError(Exception):
    """The API server said no (``status`` is its HTTP status), or never answered (0)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{message} ({status} {reason})" if status else message)
        self.status = status
        self.reason = reason  # the Status object's reason: NotFound, AlreadyExists, Expired…
        self.message = message

    @classmethod
    def from_answer(cls, status: int, body: bytes) -> ApiError:
        """The error a non-2xx answer carries (a ``Status`` object, if the body is one)."""
        try:
            answer = json.loads(body)
        except ValueError:
            answer = {}
        if not isinstance(answer, dict):
            answer = {}
        message = str(answer.get("message") or body[:200].decode(errors="replace").strip())
        return cls(status, str(answer.get("reason") or ""), message or f"HTTP {status}")

    @classmethod
    def unreachable(cls, server: str, error: BaseException) -> ApiError:
        return cls(0, "", f"Kubernetes API server not reachable at {server}: {error}")


def _ssl_context(configuration: Configuration) -> ssl.SSLContext:
    """The TLS settings the configuration names (its CA, client certificate, verification)."""
    context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
    if configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, keyfile=configuration.key_file)
    if not configuration.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


async def load_configuration(kubeconfig: Path | None) -> Configuration:
    """The cluster's address and credentials: ``kubeconfig``, else the pod's service account,
    else ``KUBECONFIG`` or ``~/.kube/config``. Raises ApiError (status 0) when none is usable.
    """
    configuration = Configuration()
    try:
        if kubeconfig is None and "KUBERNETES_SERVICE_HOST" in os.environ:
            load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            path = str(kubeconfig) if kubeconfig is not None else None
            await load_kube_config(config_file=path, client_configuration=configuration)
    except (ConfigException, OSError, ValueError) as error:
        where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        raise ApiError(0, "", f"no usable Kubernetes configuration ({where}): {error}") from None
    return configuration


class KubeClient:
    """One API server, with the credentials ``configuration`` holds; made in a running loop."""

    def __init__(self, configuration: Configuration) -> None:
        self.configuration = configuration
        self.server: str = str(configuration.host).rstrip("/")
        # No cap on connections: every running process holds one (its exec).
        connector = aiohttp.TCPConnector(limit=0, ssl=_ssl_context(configuration))
        self.session = aiohttp.ClientSession(connector=connector, read_bufsize=READ_BUFFER)

    async def close(self) -> None:
        await self.session.close()

    async def _headers(self, content_type: str | None = None) -> dict[str, str]:
        # Asked at every request: the configuration refreshes expiring tokens.
        headers = {"Accept": "application/json"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        settings: Mapping[str, Mapping[str, Any]] = await self.configuration.auth_settings()
        for auth in settings.values():
            if auth.get("in") == "header" and auth.get("value"):
                headers[str(auth["key"])] = str(auth["value"])
        return headers

    def url(self, path: str) -> str:
        return self.server + path

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Query = (),
        body: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        """The answer's JSON object; ApiError for a refusal or no answer."""
        data = None if body is None else json.dumps(body).encode()
        headers = await self._headers(content_type if data is not None else None)
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT, connect=CONNECT_TIMEOUT)
        try:
            async with self.session.request(
                method,
                self.url(path),
                params=list(query),
                data=data,
                headers=headers,
                timeout=timeout,
            ) as response:
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            raise ApiError.unreachable(self.server, error) from None
        if status >= 300:
            raise ApiError.from_answer(status, raw)
        try:
            answer = json.loads(raw) if raw else {}
        except ValueError:
            raise ApiError(status, "", f"not JSON: {raw[:200]!r}") from None
        return answer if isinstance(answer, dict) else {}

    @asynccontextmanager
    async def stream(
        self, path: str, query: Query, *, idle: float
    ) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        """A watch: its events, one JSON object a line, until the server ends it.

        ``idle``: seconds without a line after which the connection is taken as lost.
        """
        headers = await self._headers()
        timeout = aiohttp.ClientTimeout(connect=CONNECT_TIMEOUT, sock_read=idle)
        try:
            response = await self.session.get(
                self.url(path), params=list(query), headers=headers, timeout=timeout
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            raise ApiError.unreachable(self.server, error) from None
        try:
            if response.status >= 300:
                raise ApiError.from_answer(response.status, await response.read())
            yield self._lines(response)
        finally:
            response.release()

    async def _lines(self, response: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
        try:
            async for line in response.content:
                if line.strip():
                    event = json.loads(line)
                    if isinstance(event, dict):
                        yield event
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            raise ApiError.unreachable(self.server, error) from None

    async def websocket(
        self, path: str, query: Query, protocols: Sequence[str]
    ) -> aiohttp.ClientWebSocketResponse:
        """An open WebSocket (an exec session); ApiError if the server refused it."""
        headers = await self._headers()
        timeout = aiohttp.ClientWSTimeout(ws_close=REQUEST_TIMEOUT)
        try:
            return await self.session.ws_connect(
                self.url(path),
                params=list(query),
                headers=headers,
                protocols=protocols,
                timeout=timeout,
                autoping=True,
                max_msg_size=0,
            )
        except aiohttp.WSServerHandshakeError as error:
            raise ApiError(error.status, "", f"exec refused: {error.message}") from None
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            raise ApiError.unreachable(self.server, error) from None


def pod_path(namespace: str, name: str = "", sub: str = "") -> str:
    path = f"/api/v1/namespaces/{quote(namespace)}/pods"
    if name:
        path += "/" + quote(name)
    if sub:
        path += "/" + sub
    return path
