"""The ``replroom`` command: serve, doctor, image, sandbox."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import signal
import stat
import sys
import termios
import tty
from collections.abc import Sequence
from typing import NoReturn

from pydantic import ValidationError

from replroom.config import Limits, Settings, setting_choices, setting_help
from replroom.sandbox import ExitReason, Process, Sandbox, SandboxError, make_backend

USAGE_ERROR = 2
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line an operator can act on, not the usage dump.
        self.exit(USAGE_ERROR, f"replroom: error: {message}\n")


def _fail(message: str) -> NoReturn:
    print(f"replroom: error: {message}", file=sys.stderr)
    raise SystemExit(USAGE_ERROR)


def _settings(args: argparse.Namespace, **overrides: object) -> Settings:
    if getattr(args, "backend", None):
        overrides["backend"] = args.backend
    if getattr(args, "runtime", None):
        overrides["docker_runtime"] = args.runtime
    try:
        # Values of any type: Settings checks them (the ValidationError below).
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        _fail(_first_error(error))


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


# -- doctor -------------------------------------------------------------------


def cmd_doctor(args: argparse.Namespace) -> int:
    from replroom import doctor  # noqa: PLC0415 - keeps `replroom --help` fast

    return asyncio.run(doctor.report(_settings(args)))


# -- image --------------------------------------------------------------------


def cmd_image_build(args: argparse.Namespace) -> int:
    from aiodocker import DockerError  # noqa: PLC0415

    from replroom.image import build_image  # noqa: PLC0415
    from replroom.server_image import build_server_image  # noqa: PLC0415

    overrides: dict[str, object] = {}
    if args.languages:
        names = tuple(name.strip() for name in args.languages.split(",") if name.strip())
        overrides["languages"] = names
        # The image does not care which language rooms start in.
        try:
            default = Settings().default_language
        except ValidationError:
            default = ""
        if names and default not in names:
            overrides["default_language"] = names[0]
    settings = _settings(args, **overrides)
    build = build_server_image if args.server else build_image
    try:
        image = build(settings, docker=args.docker, force=args.force)
    except (SandboxError, DockerError) as error:
        print(f"replroom: error: {error}", file=sys.stderr)
        return 1
    print(f"{'server' if args.server else 'room'} image {image.id}: {image.rootfs}")
    if args.docker:
        print(f"docker image: {image.docker_tag}")
    return 0


def cmd_image_list(args: argparse.Namespace) -> int:
    from replroom.packs import list_images_and_packs  # noqa: PLC0415

    for line in list_images_and_packs(_settings(args)):
        print(line)
    return 0


def cmd_image_prune(args: argparse.Namespace) -> int:
    from replroom.image import prune_images  # noqa: PLC0415

    try:
        removed = prune_images(_settings(args))
    except SandboxError as error:
        print(f"replroom: error: {error}", file=sys.stderr)
        return 1
    print(f"removed {len(removed)} image(s) and pack(s)")
    return 0


# -- sandbox run ----------------------------------------------------------------


def _limits(args: argparse.Namespace, defaults: Limits) -> Limits:
    values = defaults.model_dump()
    for name in ("memory", "cpus", "pids", "disk"):
        value = getattr(args, name)
        if value is not None:
            values[name] = value
    try:
        return Limits(**values)
    except ValidationError as error:
        _fail(_first_error(error))


def cmd_sandbox_run(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        _fail("no command given: replroom sandbox run [options] -- CMD ARGS…")
    settings = _settings(args)
    limits = _limits(args, settings.limits)
    try:
        return asyncio.run(_run_in_sandbox(settings, limits, command, args.tty))
    except SandboxError as error:
        _fail(str(error))


async def _run_in_sandbox(
    settings: Settings, limits: Limits, command: list[str], use_tty: bool
) -> int:
    """Run ``command`` in a new sandbox and remove the sandbox however we are stopped.

    SIGTERM, SIGINT and SIGHUP, and our stdout being closed, end the run with
    128 + the signal (141 for the closed stdout, like a shell's SIGPIPE),
    after the sandbox is destroyed: nothing is left running.
    """
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    stopped_by: list[int] = []

    def stop(signum: int) -> None:
        if not stopped_by:
            stopped_by.append(signum)
            main.cancel()

    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop, signum)
    if _is_pipe(1):
        # epoll reports an error on a pipe's write end once its reader is gone,
        # so we notice even while the command prints nothing.
        loop.add_reader(1, stop, signal.SIGPIPE)
    from replroom.image import recipe_image  # noqa: PLC0415 - keeps `replroom --help` fast

    backend = make_backend(settings, recipe_image(settings))
    sandbox: Sandbox | None = None
    creating = asyncio.ensure_future(backend.create("cli-" + os.urandom(8).hex(), limits))
    try:
        # Shielded: a signal during creation must not leave a half-made sandbox.
        sandbox = await asyncio.shield(creating)
        return await _attach(sandbox, command, use_tty, limits)
    except asyncio.CancelledError:
        if not stopped_by:
            raise
        if sandbox is None and not creating.cancelled():
            with contextlib.suppress(SandboxError):
                sandbox = await creating
        return 128 + stopped_by[0]
    except BrokenPipeError:
        stopped_by.append(signal.SIGPIPE)
        return 128 + signal.SIGPIPE
    finally:
        if stopped_by[:1] == [signal.SIGPIPE]:
            _silence_stdout()
        if sandbox is not None:
            await sandbox.destroy()
        await backend.close()


async def _attach(sandbox: Sandbox, command: list[str], use_tty: bool, limits: Limits) -> int:
    cols, rows = os.get_terminal_size(sys.stdout.fileno()) if _is_tty(1) else (80, 24)
    process = await sandbox.spawn(command, tty=use_tty, cols=cols, rows=rows)
    loop = asyncio.get_running_loop()
    stdin_task = asyncio.create_task(_pump_stdin(process, raw=use_tty and _is_tty(0)))
    if use_tty and _is_tty(1):
        loop.add_signal_handler(
            signal.SIGWINCH,
            lambda: asyncio.ensure_future(process.resize(*os.get_terminal_size(1))),
        )
    try:
        out = sys.stdout.buffer
        while chunk := await process.read():
            out.write(chunk)
            out.flush()
        status = await process.wait()
    finally:
        stdin_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stdin_task
    if status.reason is ExitReason.OUT_OF_MEMORY:
        print(f"replroom: {status.describe(limits)}: the process was killed", file=sys.stderr)
    return status.returncode


def _is_tty(fd: int) -> bool:
    return os.isatty(fd)


def _is_pipe(fd: int) -> bool:
    try:
        return stat.S_ISFIFO(os.fstat(fd).st_mode)
    except OSError:
        return False


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that exiting with a closed one prints no error."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)


async def _pump_stdin(process: Process, *, raw: bool) -> None:
    """Copy our stdin to the process: raw keystrokes with --tty, else until EOF."""
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd) if raw else None
    if raw:
        tty.setraw(fd)
    queue: asyncio.Queue[bytes] = asyncio.Queue()

    def on_readable() -> None:
        try:
            data = os.read(fd, 65536)
        except OSError:
            data = b""
        queue.put_nowait(data)
        if not data:
            loop.remove_reader(fd)

    try:
        loop.add_reader(fd, on_readable)
    except (PermissionError, ValueError):
        # stdin is a regular file or /dev/null: epoll cannot watch it.
        data = await asyncio.to_thread(sys.stdin.buffer.read)
        if data:
            await process.write(data)
        await process.close_stdin()
        return
    try:
        while data := await queue.get():
            await process.write(data)
        await process.close_stdin()
    finally:
        loop.remove_reader(fd)
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def cmd_sandbox_cleanup(args: argparse.Namespace) -> int:
    settings = _settings(args)

    async def cleanup() -> int:
        from replroom.image import recipe_image  # noqa: PLC0415 - keeps `replroom --help` fast

        backend = make_backend(settings, recipe_image(settings))
        try:
            return await backend.cleanup_orphans()
        finally:
            await backend.close()

    try:
        count = asyncio.run(cleanup())
    except SandboxError as error:
        _fail(str(error))
    print(f"removed {count} leftover sandbox(es)")
    return 0


# -- serve ------------------------------------------------------------------


def _raise_open_files_limit() -> None:
    """Let the server open as many files as the host allows, not the usual 1024.

    Each room with five members holds about seven descriptors (sockets, its
    pty, its cgroup's files): a soft limit of 1024 would refuse new members
    at about 140 busy rooms.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        # An unlimited hard limit is still capped by the kernel (fs.nr_open).
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn  # noqa: PLC0415 - only the server needs it

    from replroom import logs  # noqa: PLC0415
    from replroom.app import create_app  # noqa: PLC0415
    from replroom.protocol import MAX_FRAME  # noqa: PLC0415
    from replroom.routes.common import WebSocketProtocol  # noqa: PLC0415

    given = {n: getattr(args, n) for n in ("host", "port", "data_dir") if getattr(args, n)}
    settings = _settings(args, **given)
    logs.configure(args.log_level)
    # The host is checked before we listen, so that a server that cannot run
    # rooms stops now with the reason rather than fail at the first member.
    _fail_unless_host_ready(settings)
    _raise_open_files_limit()
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    print(f"replroom: open http://{host}:{settings.port}/ to start a room", flush=True)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        loop="uvloop",
        http="httptools",
        ws=WebSocketProtocol,  # permessage-deflate on the editor socket only
        # Larger frames are refused (1009) before the app sees them.
        ws_max_size=MAX_FRAME,
        ws_ping_interval=20,
        ws_ping_timeout=20,
        timeout_graceful_shutdown=5,
    )
    return 0


def _fail_unless_host_ready(settings: Settings) -> None:
    from replroom.host import HostNotReady, open_backend  # noqa: PLC0415

    async def check() -> None:
        backend = await open_backend(settings)
        await backend.close()

    try:
        asyncio.run(check())
    except HostNotReady as error:
        print(f"replroom: cannot serve: {error}", file=sys.stderr)
        raise SystemExit(1) from None


# -- parser -------------------------------------------------------------------


def _help(setting: str) -> str:
    """An option's help: its setting's description and default (replroom/config.py)."""
    described = setting_help(setting)
    text = f"{described.meaning} (default: {described.default})".replace("`", "")
    return text.replace("%", "%%")  # argparse expands % in help


def _add_backend_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=setting_choices("backend"), help=_help("backend"))
    parser.add_argument(
        "--runtime", choices=setting_choices("docker_runtime"), help=_help("docker_runtime")
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="replroom", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    doctor = commands.add_parser(
        "doctor", help="which backends and runtimes work here, and why not"
    )
    doctor.set_defaults(func=cmd_doctor)

    image = commands.add_parser("image", help="the room image").add_subparsers(
        dest="image_command", required=True, parser_class=_Parser
    )
    build = image.add_parser("build", help="build the room image with debootstrap (cached)")
    build.add_argument("--docker", action="store_true", help="also import it into Docker")
    build.add_argument("--force", action="store_true", help="rebuild even if cached")
    build.add_argument(
        "--server", action="store_true", help="the server's own image instead (deploy/compose.yaml)"
    )
    build.add_argument(
        "--languages",
        metavar="NAMES",
        help="the languages whose packs to build, comma-separated (default: the `languages` "
        "setting)",
    )
    build.set_defaults(func=cmd_image_build)
    listing = image.add_parser("list", help="the base images, language packs and room images here")
    listing.set_defaults(func=cmd_image_list)
    prune = image.add_parser(
        "prune", help="remove the images and packs that the current settings do not use"
    )
    prune.set_defaults(func=cmd_image_prune)

    sandbox = commands.add_parser("sandbox", help="run things in a sandbox").add_subparsers(
        dest="sandbox_command", required=True, parser_class=_Parser
    )
    run = sandbox.add_parser(
        "run",
        help="run CMD in a fresh sandbox, stream its output, exit with its status",
        description="Run CMD in a fresh sandbox; exits with its status (137 when out of memory).",
    )
    _add_backend_options(run)
    run.add_argument("--memory", help=_help("limits.memory"))
    run.add_argument("--cpus", type=float, help=_help("limits.cpus"))
    run.add_argument("--pids", type=int, help=_help("limits.pids"))
    run.add_argument("--disk", help=_help("limits.disk"))
    run.add_argument("--tty", action="store_true", help="run on a pseudo-terminal")
    run.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS…")
    run.set_defaults(func=cmd_sandbox_run)

    serve = commands.add_parser(
        "serve",
        help="run the replroom server",
        epilog="Every setting can also come from a REPLROOM_<NAME> environment variable or "
        "the TOML file named by REPLROOM_CONFIG: docs/configuration.md lists them.",
    )
    serve.add_argument("--host", help=_help("host"))
    serve.add_argument("--port", type=int, help=_help("port"))
    _add_backend_options(serve)
    serve.add_argument("--data-dir", dest="data_dir", help=_help("data_dir"))
    serve.add_argument(
        "--log-level", default="info", help="debug, info, warning or error (default: info)"
    )
    serve.set_defaults(func=cmd_serve)

    cleanup = sandbox.add_parser("cleanup", help="remove sandboxes a crashed server left")
    _add_backend_options(cleanup)
    cleanup.set_defaults(func=cmd_sandbox_cleanup)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
