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
    SandboxImage,
    SandboxStats,
)

__all__ = [
    "Backend",
    "ExitReason",
    "ExitStatus",
    "Process",
    "Sandbox",
    "SandboxError",
    "SandboxImage",
    "SandboxStats",
    "make_backend",
]


def make_backend(settings: Settings, image: SandboxImage) -> Backend:
    """The backend ``settings.backend`` names, configured from ``settings``, running ``image``.

    ``image`` is the room image of the current recipe (``replroom.image``
    passes it in: the sandboxes never import the image builder). The bwrap
    backend needs it built on this host; the docker backend, in its Engine; the
    kubernetes backend, on its nodes or in a registry (``kubernetes_image``).
    """
    if settings.backend == "bwrap":
        from replroom.sandbox.bwrap import BwrapBackend  # noqa: PLC0415

        return BwrapBackend.from_settings(settings, image)
    if settings.backend == "kubernetes":
        from replroom.sandbox.kubernetes import KubernetesBackend  # noqa: PLC0415

        return KubernetesBackend.from_settings(settings, image)
    from replroom.sandbox.docker import DockerBackend  # noqa: PLC0415

    return DockerBackend.from_settings(settings, image)
