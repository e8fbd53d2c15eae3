"""Prometheus metrics, all named ``replroom_*``, served at ``GET /metrics``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()

ROOMS_CREATED = Counter("replroom_rooms_created", "Rooms created", registry=REGISTRY)
ROOMS_ACTIVE = Gauge("replroom_rooms_active", "Rooms held in memory", registry=REGISTRY)
MEMBERS = Gauge("replroom_members", "Connected members, all rooms", registry=REGISTRY)
SANDBOXES = Gauge("replroom_sandboxes", "Running sandboxes", registry=REGISTRY)
SANDBOX_STARTS = Counter("replroom_sandbox_starts", "Sandboxes started", registry=REGISTRY)
SANDBOX_START_SECONDS = Histogram(
    "replroom_sandbox_start_seconds",
    "Time to create a sandbox",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
OOM_KILLS = Counter("replroom_oom_kills", "REPLs killed for memory", registry=REGISTRY)
BYTES_RELAYED = Counter(
    "replroom_terminal_bytes_relayed", "Terminal output bytes sent to members", registry=REGISTRY
)
BAD_MESSAGES = Counter(
    "replroom_bad_messages", "Client messages refused as invalid", registry=REGISTRY
)
