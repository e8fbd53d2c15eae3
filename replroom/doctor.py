"""``replroom doctor``: can this host serve rooms as configured, and which backends work here.

The configured backend is checked through the code ``serve`` runs at start-up
(:func:`replroom.host.open_backend`: directories, image, backend), then a real
sandbox with the room limits starts the default language's REPL. The other
backends and runtimes are listed for information.
"""

from __future__ import annotations

from replroom.config import Settings
from replroom.host import HostNotReady, open_backend, try_repl
from replroom.image import current_image
from replroom.sandbox import SandboxError
from replroom.sandbox.bwrap import BwrapBackend
from replroom.sandbox.docker import diagnose as diagnose_docker
from replroom.sandbox.kubernetes import KubernetesBackend


def _line(name: str, problems: list[str], detail: str = "") -> str:
    if not problems:
        return f"  {name:<16} ok" + (f": {detail}" if detail else "")
    first, *rest = problems
    lines = [f"  {name:<16} NO: {first}"]
    lines += [f"  {'':<16}     {problem}" for problem in rest]
    return "\n".join(lines)


def _configured(settings: Settings) -> str:
    if settings.backend == "docker":
        return f"docker ({settings.docker_runtime})"
    if settings.backend == "kubernetes":
        runtime_class = settings.kubernetes_runtime_class or "the default runtime"
        return f"kubernetes ({runtime_class}, namespace {settings.kubernetes_namespace})"
    return settings.backend


async def report(settings: Settings) -> int:
    """Print what works; exit status 0 when ``serve`` would serve rooms with these settings."""
    image = current_image(settings)
    print(f"room image ({settings.image_dir})")
    if image is None and settings.backend in ("docker", "kubernetes"):
        where = "the Engine" if settings.backend == "docker" else "the cluster's registry"
        need = f"not on disk; the {settings.backend} backend needs it in {where}"
        print(_line("image", [], need))
    else:
        print(_line(image.id if image else "image", [] if image else ["not built: run make run"]))

    print("sandbox backends")
    print(_line("bwrap", BwrapBackend.problems()))
    for runtime in ("runc", "runsc"):
        reason = await diagnose_docker(settings.docker_host, runtime, image)
        print(_line(f"docker ({runtime})", [reason] if reason else []))

    chosen = _configured(settings)
    print(f"configured: {chosen}, data {settings.data_dir}, runtime {settings.runtime_dir}")
    try:
        backend = await open_backend(settings)
    except HostNotReady as error:
        print(_line("start-up", [str(error)]))
        print(f"configured backend: {chosen}: NOT ready")
        return 1
    print(_line("start-up", []))
    if isinstance(backend, KubernetesBackend):  # reachability, permissions, runtime class
        print(_line("cluster", [], backend.summary))
    try:
        check = await try_repl(backend, settings)
    except SandboxError as error:
        print(_line("room", [str(error)]))
        print(f"configured backend: {chosen}: NOT ready")
        return 1
    finally:
        await backend.close()
    detail = (
        f"{check.language} prompt {1000 * check.prompt_seconds:.0f} ms after a "
        f"{1000 * check.sandbox_seconds:.0f} ms sandbox start"
    )
    print(_line("room", [], detail))
    print(f"configured backend: {chosen}: ready")
    return 0
