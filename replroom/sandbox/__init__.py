"""Sandbox backends behind one interface (see base.py); ``make_backend`` picks one."""

from __future__ import annotations

from replroom.config import Settings
from replroom.sandbox.base import (
    Backend,
    ExitReason,
    ExitStatus,
    Process,
    Sandbox,
    SandboxError,
    SandboxStats,
)

__all__ = [
    "Backend",
    "ExitReason",
    "ExitStatus",
    "Process",
    "Sandbox",
    "SandboxError",
    "SandboxStats",
    "make_backend",
]


def make_backend(settings: Settings) -> Backend:
    """The backend ``settings.backend`` names, configured from ``settings``."""
    if settings.backend == "bwrap":
        from replroom.sandbox.bwrap import BwrapBackend  # noqa: PLC0415

        return BwrapBackend.from_settings(settings)
    from replroom.sandbox.docker import DockerBackend  # noqa: PLC0415

    return DockerBackend.from_settings(settings)
