"""Sandbox benchmark: start latency, REPL prompt latency and memory per language, destroy time.

    .venv/bin/python bench/sandbox.py [--backends bwrap,docker-runc,docker-runsc] [--runs 20]
                                      [--languages all|python,lua,...]

Prints one table per backend. Docker backends need DOCKER_HOST (scripts/dockerd
start prints it). Figures are measured here, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable

from figures import line

from replroom.config import Limits, Settings, format_size
from replroom.image import current_image, recipe_image
from replroom.languages import LANGUAGES, Language
from replroom.sandbox import Backend, Sandbox, make_backend

LIMITS = Limits()


def describe(samples: list[float]) -> str:
    return line("", samples, width=0).strip()


def room() -> str:
    return "bench-" + uuid.uuid4().hex[:12]


async def drain(process) -> None:  # type: ignore[no-untyped-def]
    while await process.read():
        pass


async def create_then_true(backend: Backend) -> tuple[float, float]:
    """Milliseconds from create() to `true` having run, and for destroy()."""
    started = time.perf_counter()
    sandbox = await backend.create(room(), LIMITS)
    process = await sandbox.spawn(["true"], tty=False)
    await drain(process)
    await process.wait()
    ran = time.perf_counter()
    await sandbox.destroy()
    return (ran - started) * 1000, (time.perf_counter() - ran) * 1000


async def wait_for_prompt(sandbox: Sandbox, language: Language) -> None:
    process = await sandbox.spawn(list(language.repl), env=dict(language.repl_env))
    output = b""
    while not language.ready(output):
        chunk = await process.read()
        if not chunk:
            raise RuntimeError(f"{language.name} REPL ended before its prompt: {output!r}")
        output += chunk
        if b"\x1b[6n" in chunk:  # answer a cursor-position query as a terminal would
            await process.write(b"\x1b[1;1R")


async def create_then_prompt(backend: Backend, language: Language) -> float:
    started = time.perf_counter()
    sandbox = await backend.create(room(), LIMITS)
    try:
        await wait_for_prompt(sandbox, language)
        return (time.perf_counter() - started) * 1000
    finally:
        await sandbox.destroy()


async def idle_memory(backend: Backend) -> tuple[int, int, int]:
    """Sandbox memory: empty, with one idle process, with an idle Python REPL (bytes)."""
    sandbox = await backend.create(room(), LIMITS)
    try:
        empty = (await sandbox.stats()).memory_bytes
        sleeper = await sandbox.spawn(["sleep", "600"], tty=False)
        await settle()
        with_process = (await sandbox.stats()).memory_bytes
        await sleeper.signal(9)
        await sleeper.wait()
        await wait_for_prompt(sandbox, LANGUAGES["python"])
        await settle()
        with_repl = (await sandbox.stats()).memory_bytes
        return empty, with_process, with_repl
    finally:
        await sandbox.destroy()


async def repl_memory(backend: Backend, language: Language) -> int:
    """The sandbox's memory with ``language``'s REPL at its prompt (bytes)."""
    sandbox = await backend.create(room(), LIMITS)
    try:
        await wait_for_prompt(sandbox, language)
        await settle()
        return (await sandbox.stats()).memory_bytes
    finally:
        await sandbox.destroy()


async def settle() -> None:
    # Let the just-started processes finish faulting in their pages.
    await asyncio.sleep(0.5)


async def repeat(runs: int, measure: Callable[[], Awaitable[float]]) -> list[float]:
    await measure()  # warm-up: page cache, seccomp compilation, image layers
    return [await measure() for _ in range(runs)]


async def bench_backend(name: str, settings: Settings, runs: int) -> None:
    backend = make_backend(settings, recipe_image(settings))
    print(f"\n== {name} ==")
    try:
        true_times: list[float] = []
        destroy_times: list[float] = []

        async def one_true() -> float:
            ran, destroyed = await create_then_true(backend)
            true_times.append(ran)
            destroy_times.append(destroyed)
            return ran

        await one_true()
        true_times.clear()
        destroy_times.clear()
        for _ in range(runs):
            await one_true()
        print(f"create -> `true` ran       {describe(true_times)}")
        print(f"destroy                    {describe(destroy_times)}")
        for language_name in settings.languages:
            language = LANGUAGES[language_name]
            samples = await repeat(runs, lambda lang=language: create_then_prompt(backend, lang))
            memory = await repl_memory(backend, language)
            print(f"create -> {language_name:<10} prompt {describe(samples)}; "
                  f"at its prompt {format_size(memory)}")  # fmt: skip
        empty, with_process, with_repl = await idle_memory(backend)
        print(f"idle sandbox memory        {format_size(empty)} empty, "
              f"{format_size(with_process)} with one idle process")  # fmt: skip
        print(f"idle Python REPL sandbox   {format_size(with_repl)}")
    finally:
        await backend.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="bwrap,docker-runc,docker-runsc")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument(
        "--languages", default="all", help="comma-separated, or all (their packs must be built)"
    )
    args = parser.parse_args()
    names = list(LANGUAGES) if args.languages == "all" else args.languages.split(",")
    base = Settings(languages=tuple(names), default_language=names[0])
    if current_image(base) is None:
        raise SystemExit(f"not built: replroom image build --languages {','.join(names)}")
    print(f"limits: {LIMITS.describe()}; {os.cpu_count()} CPUs")
    for name in args.backends.split(","):
        if name == "bwrap":
            settings = base.model_copy(update={"backend": "bwrap"})
        elif not os.environ.get("DOCKER_HOST"):
            print(f"\n== {name} ==\nskipped: DOCKER_HOST not set (scripts/dockerd start)")
            continue
        else:
            runtime = name.removeprefix("docker-")
            settings = base.model_copy(update={"backend": "docker", "docker_runtime": runtime})
        await bench_backend(name, settings, args.runs)


if __name__ == "__main__":
    asyncio.run(main())
