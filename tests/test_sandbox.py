"""The sandbox interface, on every backend: processes, ptys, files, stats, life cycle."""

from __future__ import annotations

import asyncio
import signal

import pytest

from replroom.config import Limits
from replroom.sandbox import ExitReason, Sandbox, SandboxError
from tests.sandboxes import BackendUnderTest, Screen, design_note_cpus, python, read_all, run


async def test_runs_a_command_and_reports_its_exit_code(sandbox: Sandbox) -> None:
    status, output = await run(sandbox, ["sh", "-c", "echo hello; echo oops >&2; exit 3"])
    assert "hello" in output and "oops" in output
    assert status.reason is ExitReason.EXITED and status.code == 3


async def test_stdin_reaches_the_process(sandbox: Sandbox) -> None:
    status, output = await run(sandbox, ["tr", "a-z", "A-Z"], stdin=b"shout\n")
    assert output.strip() == "SHOUT" and status.code == 0


async def test_environment_and_identity(sandbox: Sandbox) -> None:
    process = await sandbox.spawn(["sh", "-c", "echo $HOME $USER $FOO; id -un; pwd"], tty=False,
                                  env={"FOO": "bar"})  # fmt: skip
    await process.close_stdin()
    output = (await read_all(process)).decode()
    assert output.split() == ["/home/room", "room", "bar", "room", "/home/room"]


async def test_pty_repl_prompt_input_and_resize(sandbox: Sandbox) -> None:
    process = await sandbox.spawn(["python3", "-q"], cols=100, rows=30)
    screen = Screen(process)
    try:
        at = await screen.wait_for(b">>> ")
        await process.write(b"import os; print(os.get_terminal_size())\r")
        at = await screen.wait_for(b"columns=100, lines=30", after=at)
        await process.resize(132, 43)
        await process.write(b"print(os.get_terminal_size())\r")
        at = await screen.wait_for(b"columns=132, lines=43", after=at)
        await process.write(b"6*7\r")
        at = await screen.wait_for(b"42", after=at)
        await process.write(b"exit()\r")
        status = await asyncio.wait_for(process.wait(), 30)
        assert status.reason is ExitReason.EXITED and status.code == 0
    finally:
        await screen.close()


async def test_ctrl_c_interrupts_a_busy_repl(sandbox: Sandbox) -> None:
    process = await sandbox.spawn(["python3", "-q"])
    screen = Screen(process)
    try:
        at = await screen.wait_for(b">>> ")
        # Spinning is announced, so Ctrl-C comes when the loop runs, not while
        # readline still owns the terminal.
        await process.write(b"exec('print(\\'spinning\\')\\nwhile True: pass')\r")
        at = await screen.wait_for(b"spinning\r\n", after=at)
        await process.write(b"\x03")
        at = await screen.wait_for(b"KeyboardInterrupt", after=at)
        await process.write(b"print('still here')\r")
        await screen.wait_for(b"still here", after=at)
    finally:
        await process.signal(signal.SIGKILL)
        await process.wait()
        await screen.close()


async def test_room_processes_do_not_preempt_the_server(
    backend: BackendUnderTest, sandbox: Sandbox
) -> None:
    if backend.name != "bwrap":
        pytest.skip("bwrap's launcher sets the scheduling class; containers keep the default")
    code = "import os; print(os.sched_getscheduler(0) == os.SCHED_BATCH)"
    status, output = await python(sandbox, code)
    assert output.strip() == "True" and status.code == 0


async def test_keystrokes_are_taken_at_once_until_the_process_stops_reading(
    backend: BackendUnderTest, sandbox: Sandbox
) -> None:
    # Raw, as a REPL's line editor has it (cooked, the kernel drops what no line holds).
    process = await sandbox.spawn(["sh", "-c", "stty raw -echo; echo ready; exec sleep 600"])
    screen = Screen(process)
    try:
        await screen.wait_for(b"ready")
        if backend.name != "bwrap":
            assert process.write_nowait(b"x") == 0  # these always take the awaited write
            return
        assert process.write_nowait(b"abc") == 3
        taken, chunk = 3, b"k" * 1024
        while (written := process.write_nowait(chunk)) == len(chunk):
            taken += written
            assert taken < 16 * 1024 * 1024, "the pty never filled up"
        # Full, for now (the kernel may make some room again as it moves input along):
        # the room awaits write(), with its timeout, for the rest.
        assert written < len(chunk)
    finally:
        await process.signal(signal.SIGKILL)
        await screen.close()


async def test_signal_kills_a_process(sandbox: Sandbox) -> None:
    process = await sandbox.spawn(["sleep", "600"], tty=False)
    await process.signal(signal.SIGTERM)
    status = await asyncio.wait_for(process.wait(), 30)
    assert status.reason is ExitReason.KILLED and status.signal == signal.SIGTERM
    assert status.returncode == 128 + signal.SIGTERM


async def test_put_file_then_read_it(sandbox: Sandbox) -> None:
    await sandbox.put_file("/home/room/code/main.py", b"print('from a file')\n")
    await sandbox.put_file("notes.txt", b"relative to home\n")
    owner = "import os; print(os.stat('code/main.py').st_uid)"
    script = f'python3 code/main.py; cat notes.txt; python3 -c "{owner}"'
    _status, output = await run(sandbox, ["sh", "-c", script])
    assert output.split("\n")[:3] == ["from a file", "relative to home", "1000"], output


async def test_put_file_refuses_paths_outside_the_writable_area(sandbox: Sandbox) -> None:
    for path in ("/etc/passwd", "/home/room/../../etc/x", "/usr/bin/python3"):
        with pytest.raises(SandboxError):
            await sandbox.put_file(path, b"x")


async def test_put_file_does_not_follow_a_planted_symlink(sandbox: Sandbox) -> None:
    plant = "ln -s /etc/hostname trap && mkdir d && ln -s /etc d/link"
    status, _ = await run(sandbox, ["sh", "-c", plant])
    assert status.code == 0
    for path in ("/home/room/trap", "/home/room/d/link/hostname"):
        with pytest.raises(SandboxError):
            await sandbox.put_file(path, b"overwritten")
    status, output = await run(sandbox, ["cat", "/etc/hostname"])
    assert "overwritten" not in output


async def test_stats_report_memory_cpu_and_processes(sandbox: Sandbox) -> None:
    process = await sandbox.spawn(
        ["python3", "-c", "x = bytearray(40 << 20); import time; print('ready', flush=True);"
         " time.sleep(600)"], tty=False)  # fmt: skip
    assert (await process.read()).startswith(b"ready")
    stats = await sandbox.stats()
    assert 40 << 20 <= stats.memory_bytes <= 128 << 20
    assert stats.pids >= 1
    assert stats.cpu_seconds > 0
    await process.signal(signal.SIGKILL)
    await process.wait()


async def test_destroy_is_idempotent_and_leaves_nothing(
    backend: BackendUnderTest, room_id: str
) -> None:
    sandbox = await backend.create(room_id, Limits(memory="64m"))
    process = await sandbox.spawn(["sleep", "600"], tty=False)
    assert await sandbox.alive()
    await sandbox.destroy()
    await sandbox.destroy()
    assert not await sandbox.alive()
    status = await asyncio.wait_for(process.wait(), 30)
    assert status.reason is not ExitReason.EXITED or status.code != 0
    assert await backend.leftovers(room_id) == []
    with pytest.raises(SandboxError):
        await sandbox.spawn(["true"])


async def test_cleanup_orphans_removes_what_a_crashed_server_left(
    backend: BackendUnderTest, room_id: str
) -> None:
    sandbox = await backend.create(room_id, Limits(memory="64m"))
    await sandbox.spawn(["sleep", "600"], tty=False)
    # A new backend instance is what a restarted server has: it never saw the room.
    from replroom.image import recipe_image
    from replroom.sandbox import make_backend

    fresh = make_backend(backend.settings, recipe_image(backend.settings))
    try:
        assert await fresh.cleanup_orphans() >= 1
    finally:
        await fresh.close()
    assert await backend.leftovers(room_id) == []


async def test_each_language_runtime_is_in_the_image(sandbox: Sandbox) -> None:
    status, output = await run(
        sandbox, ["sh", "-c", "python3 --version; node --version; ruby --version; bash --version"]
    )
    assert status.code == 0, output
    for word in ("Python 3", "v1", "ruby", "GNU bash"):
        assert word in output


async def test_python_under_the_design_note_profile(
    backend: BackendUnderTest, room_id: str
) -> None:
    sandbox = await backend.create(
        room_id, Limits(memory="100m", cpus=design_note_cpus(backend.name))
    )
    status, output = await python(sandbox, "print(sum(range(10)))")
    assert output.strip() == "45" and status.code == 0


@pytest.mark.parametrize("language", ["python", "node", "ruby", "bash"])
async def test_every_repl_reaches_its_prompt_under_the_design_note_profile(
    backend: BackendUnderTest, room_id: str, language: str
) -> None:
    from replroom.languages import get_language

    spec = get_language(language)
    sandbox = await backend.create(
        room_id, Limits(memory="100m", cpus=design_note_cpus(backend.name))
    )
    process = await sandbox.spawn(list(spec.repl), env=dict(spec.repl_env))
    screen = Screen(process)
    try:
        await screen.wait_until(spec.ready, f"the {language} prompt", timeout=120)
    finally:
        await process.signal(signal.SIGKILL)
        await process.wait()
        await screen.close()
