"""``replroom doctor``: which sandbox backends and runtimes work on this host, and why not."""

from __future__ import annotations

from replroom.config import Settings
from replroom.image import current_image
from replroom.sandbox.bwrap import BwrapBackend
from replroom.sandbox.docker import diagnose as diagnose_docker


def _line(name: str, problems: list[str]) -> str:
    if not problems:
        return f"  {name:<16} ok"
    first, *rest = problems
    lines = [f"  {name:<16} NO: {first}"]
    lines += [f"  {'':<16}     {problem}" for problem in rest]
    return "\n".join(lines)


async def report(settings: Settings) -> int:
    """Print what works; exit status 0 when the configured backend is usable."""
    image = current_image(settings)
    image_problems = [] if image else ["not built: run `replroom image build`"]
    print(f"room image ({settings.images})")
    print(_line(image.id if image else "image", image_problems))

    print("sandbox backends")
    bwrap_problems = BwrapBackend.problems()
    print(_line("bwrap", bwrap_problems))
    docker_problems: dict[str, list[str]] = {}
    for runtime in ("runc", "runsc"):
        reason = await diagnose_docker(settings.docker_host, runtime, image)
        docker_problems[runtime] = [reason] if reason else []
        print(_line(f"docker ({runtime})", docker_problems[runtime]))

    if settings.backend == "bwrap":
        usable = not bwrap_problems
    else:
        usable = not docker_problems[settings.docker_runtime]
    usable = usable and image is not None
    chosen = settings.backend + (
        f" ({settings.docker_runtime})" if settings.backend == "docker" else ""
    )
    print(f"configured backend: {chosen}: {'ready' if usable else 'NOT ready'}")
    return 0 if usable else 1
