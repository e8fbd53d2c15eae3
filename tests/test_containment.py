"""Real attacks, each run in one sandbox while a second sandbox lives beside it.

Every test asserts that the attack is contained, and that the host and the
bystander room are unaffected. They run on bwrap, docker+runc and docker+runsc.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from replroom.config import Limits
from replroom.sandbox import ExitReason, Sandbox
from replroom.sandbox.docker import DockerSandbox
from replroom.sandbox.docker.launch import LAUNCH_FILTERED, PYTHON
from replroom.sandbox.seccomp import compiled_filter, syscall_number
from tests.sandboxes import BackendUnderTest, Screen, host_disk_free, python, run

ATTACK_LIMITS = Limits(memory="96m", cpus=0.25, pids=64, disk="16m")
SECRET = "bystander-secret-" + uuid.uuid4().hex


@dataclass
class Rooms:
    attacker: Sandbox
    bystander: Sandbox


@pytest.fixture
async def rooms(backend: BackendUnderTest) -> AsyncIterator[Rooms]:
    attacker = await backend.create("atk-" + uuid.uuid4().hex[:12], ATTACK_LIMITS)
    bystander = await backend.create("bys-" + uuid.uuid4().hex[:12], Limits(memory="64m"))
    await bystander.put_file("/home/room/secret.txt", SECRET.encode())
    yield Rooms(attacker, bystander)
    # The bystander must have come through whatever the attacker did.
    status, output = await run(bystander, ["cat", "/home/room/secret.txt"])
    assert status.code == 0 and output == SECRET, "the bystander room was harmed"
    await attacker.destroy()
    await bystander.destroy()


async def test_memory_bomb_is_killed_and_reported(rooms: Rooms) -> None:
    status, _ = await python(
        rooms.attacker, "chunks = []\nwhile True: chunks.append(bytearray(1 << 20))"
    )
    assert status.reason is ExitReason.OUT_OF_MEMORY
    assert status.returncode == 137
    assert "out of memory (limit 96 MiB)" in status.describe(ATTACK_LIMITS)


async def test_fork_bomb_is_bounded_and_destroy_cleans_up(
    backend: BackendUnderTest, rooms: Rooms
) -> None:
    # Count how far forking gets before the kernel says no.
    _status, output = await python(
        rooms.attacker,
        "import os, signal, time\n"
        "children = []\n"
        "try:\n"
        "    while True:\n"
        "        child = os.fork()\n"
        "        if child == 0:\n"
        "            time.sleep(600)\n"
        "            os._exit(0)\n"
        "        children.append(child)\n"
        "except OSError as e:\n"
        "    print('stopped at', len(children), e.strerror, flush=True)\n"
        # Give the processes back, so that the next attack can start.
        "for child in children:\n"
        "    os.kill(child, signal.SIGKILL)\n"
        "    os.waitpid(child, 0)\n",
    )
    if backend.name == "docker-runsc" and "stopped at" not in output:
        # gVisor enforces no process limit inside; each task costs host threads,
        # and the host's pids limit ends the whole sandbox: contained, but fatal.
        # The Engine learns of the death a moment later; no event says when.
        for _ in range(300):
            if not await rooms.attacker.alive():
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"the sandbox survived a failed fork bomb: {output}")
        room_id = rooms.attacker.room_id
        await rooms.attacker.destroy()
        assert await backend.leftovers(room_id) == []
        return
    assert "stopped at" in output, output
    assert int(output.split()[2]) < ATTACK_LIMITS.pids
    # A classic shell fork bomb, left running, then the room is destroyed.
    bomb = await rooms.attacker.spawn(["bash", "-c", ":(){ :|:& };:"], tty=False)
    stats = await rooms.attacker.stats()
    assert stats.pids <= ATTACK_LIMITS.pids
    room_id = rooms.attacker.room_id
    await rooms.attacker.destroy()
    await asyncio.wait_for(bomb.wait(), 60)
    assert await backend.leftovers(room_id) == []


async def test_cpu_spin_is_held_to_its_share(rooms: Rooms) -> None:
    spin = await rooms.attacker.spawn(["python3", "-c", "while True: pass"], tty=False)
    try:
        before, started = await rooms.attacker.stats(), time.monotonic()
        # The measurement needs wall time to pass; nothing is synchronised on it.
        await asyncio.sleep(2.0)
        after, ended = await rooms.attacker.stats(), time.monotonic()
        share = (after.cpu_seconds - before.cpu_seconds) / (ended - started)
        assert share <= ATTACK_LIMITS.cpus * 1.3, f"used {share:.2f} cores"
        _status, output = await python(rooms.bystander, "print('responsive')")
        assert output.strip() == "responsive"
    finally:
        await spin.signal(signal.SIGKILL)
        await spin.wait()


async def test_disk_fill_stops_at_the_limit(rooms: Rooms) -> None:
    free_before = host_disk_free()
    status, output = await run(
        rooms.attacker,
        ["sh", "-c", "dd if=/dev/zero of=/home/room/fill bs=1M count=64; "
         "dd if=/dev/zero of=/tmp/fill bs=1M count=64; "
         "dd if=/dev/zero of=/dev/shm/fill bs=1M count=64; du -sk /home/room /tmp"],
    )  # fmt: skip
    assert "No space left on device" in output, output
    assert status.code == 0
    sizes = [int(line.split()[0]) for line in output.splitlines() if line.endswith(("room", "tmp"))]
    assert sum(sizes) <= 16 * 1024 + 64, output
    # Nothing reached the host's disk (allowing for unrelated activity).
    assert free_before - host_disk_free() < 8 << 20


async def test_rm_rf_root_only_removes_the_rooms_own_files(rooms: Rooms) -> None:
    await rooms.attacker.put_file("/home/room/mine.txt", b"mine")
    await run(rooms.attacker, ["rm", "-rf", "--no-preserve-root", "/"], timeout=120)
    _status, output = await run(rooms.attacker, ["sh", "-c", "ls /home/room; python3 -V"])
    assert "mine.txt" not in output
    assert "Python 3" in output, "the read-only root lost files"


async def test_no_network(rooms: Rooms) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        _status, output = await python(
            rooms.attacker,
            "import socket\n"
            "def attempt(what, f):\n"
            "    try:\n"
            "        f(); print(what, 'OPEN')\n"
            "    except OSError as e:\n"
            "        print(what, 'blocked', e)\n"
            f"address = ('127.0.0.1', {port})\n"
            "attempt('host-loopback', lambda: socket.create_connection(address, 3))\n"
            "attempt('dns', lambda: socket.getaddrinfo('deb.debian.org', 80))\n"
            # A UDP connect sends no packet; it only asks for a route.
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "attempt('route', lambda: s.connect(('192.0.2.1', 53)))\n"
            "lines = open('/proc/net/dev').readlines()[2:]\n"
            "print('interfaces', sorted(line.split(':')[0].strip() for line in lines))\n",
        )
        assert "OPEN" not in output, output
        assert output.count("blocked") == 3, output
        assert "interfaces ['lo']" in output or "interfaces []" in output, output
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()


async def test_host_secrets_and_other_rooms_are_invisible(rooms: Rooms, settings) -> None:  # type: ignore[no-untyped-def]
    host_shadow = hashlib.sha256(Path("/etc/shadow").read_bytes()).hexdigest()
    _status, output = await python(
        rooms.attacker,
        "import hashlib, os\n"
        "try:\n"
        "    print('shadow', hashlib.sha256(open('/etc/shadow','rb').read()).hexdigest())\n"
        "except OSError as e:\n"
        "    print('shadow unreadable', e.strerror)\n"
        f"print('datadir', os.path.exists({str(settings.data_dir)!r}))\n"
        "found = []\n"
        "for top in ('/home', '/tmp', '/run', '/var', '/mnt', '/srv', '/opt', '/root'):\n"
        "    for d, _, files in os.walk(top):\n"
        "        found += [f for f in files if f == 'secret.txt']\n"
        "print('found', found)\n",
    )
    assert host_shadow not in output
    assert "datadir False" in output
    assert "found []" in output, output
    assert SECRET not in output


async def test_host_and_other_rooms_processes_are_invisible_and_unsignalable(
    rooms: Rooms,
) -> None:
    host_process = subprocess.Popen(["sleep", "600"])
    bystander_process = await rooms.bystander.spawn(["sleep", "600"], tty=False)
    try:
        _status, output = await python(
            rooms.attacker,
            "import os, signal\n"
            f"print('host pid visible', os.path.exists('/proc/{host_process.pid}/cmdline')"
            f" and b'sleep' in open('/proc/{host_process.pid}/cmdline','rb').read())\n"
            "pids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
            "print('processes', len(pids))\n"
            "try:\n"
            "    os.kill(-1, signal.SIGKILL)\n"
            "except OSError as e:\n"
            "    print('kill -1', e)\n",
        )
        assert "host pid visible False" in output or "host pid visible" not in output
        # The kill(-1) may have taken the attacker itself down; that is its business.
        assert host_process.poll() is None, "a host process was killed from a sandbox"
        assert bystander_process is not None
        _status, output = await run(rooms.bystander, ["echo", "alive"])
        assert output.strip() == "alive"
    finally:
        host_process.kill()
        host_process.wait()
        await bystander_process.signal(signal.SIGKILL)
        await bystander_process.wait()


async def test_identity_is_unprivileged(rooms: Rooms) -> None:
    _status, output = await python(
        rooms.attacker,
        "import ctypes, os\n"
        "print('uid', os.getuid(), os.geteuid())\n"
        "print([l for l in open('/proc/self/status') if l.startswith('CapEff')][0].strip())\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "def attempt(what, f):\n"
        "    try:\n"
        "        r = f()\n"
        "        print(what, 'ALLOWED' if r in (0, None) else 'refused', r, ctypes.get_errno())\n"
        "    except OSError as e:\n"
        "        print(what, 'refused', e)\n"
        "attempt('setuid', lambda: os.setuid(0))\n"
        "attempt('mount', lambda: libc.mount(b'none', b'/tmp', b'tmpfs', 0, None))\n"
        "attempt('unshare', lambda: libc.unshare(0x10000000))\n"
        "attempt('chroot', lambda: os.chroot('/tmp'))\n"
        # PTRACE_ATTACH to the test runner, a host process.
        f"attempt('ptrace', lambda: libc.ptrace(16, {os.getpid()}, 0, 0))\n",
    )
    assert "uid 1000 1000" in output, output
    assert "CapEff:\t0000000000000000" in output, output
    assert "ALLOWED" not in output, output


async def test_tiocsti_cannot_inject_keystrokes_outside(rooms: Rooms) -> None:
    _status, output = await python(
        rooms.attacker,
        "import fcntl, os, termios\n"
        "targets = [0, 1, 2]\n"
        "try:\n"
        "    targets.append(os.open('/dev/tty', os.O_RDWR))\n"
        "except OSError as e:\n"
        "    print('no controlling terminal:', e.strerror)\n"
        "for fd in targets:\n"
        "    try:\n"
        "        fcntl.ioctl(fd, termios.TIOCSTI, b'x')\n"
        "        print(fd, 'INJECTED')\n"
        "    except OSError as e:\n"
        "        print(fd, 'refused', e.strerror)\n",
    )
    assert "INJECTED" not in output, output
    assert "no controlling terminal" in output, output


async def test_host_is_untouched(rooms: Rooms) -> None:
    # A canary written by the host where a sandbox could reach it if the root were shared.
    canary = f"/tmp/replroom-canary-{uuid.uuid4().hex}"
    with open(canary, "w") as f:
        f.write("host")
    try:
        _status, _output = await run(rooms.attacker, ["sh", "-c", f"ls {canary}; rm -f {canary}"])
        assert os.path.exists(canary)
    finally:
        os.unlink(canary)


async def raw_syscalls(
    sandbox: Sandbox, calls: list[tuple[str, str, tuple[int | str, ...]]]
) -> dict[str, str]:
    """Make raw system calls in ``sandbox``: label -> "ok" or the errno's name.

    An argument "buf" is the address of a zeroed 4 KiB buffer. The numbers
    are the host's: sandboxes run on the host's architecture.
    """
    numbers = {name: syscall_number(name) for _, name, _ in calls}
    _status, output = await python(
        sandbox,
        "import ctypes, errno, json\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "libc.syscall.restype = ctypes.c_long\n"
        "buf = ctypes.create_string_buffer(4096)\n"
        "results = {}\n"
        f"for label, name, args in {calls!r}:\n"
        "    args = [ctypes.addressof(buf) if a == 'buf' else a for a in args]\n"
        f"    r = libc.syscall(ctypes.c_long({numbers!r}[name]), "
        "*[ctypes.c_ulong(a) for a in args])\n"
        "    results[label] = 'ok' if r >= 0 else errno.errorcode[ctypes.get_errno()]\n"
        "print(json.dumps(results))\n",
    )
    return json.loads(output)


async def test_every_room_process_runs_under_the_seccomp_policy(rooms: Rooms) -> None:
    # On runsc the container's profile reaches its first process only: every
    # exec must then be filtered by the backend's launcher. A REPL on a pty,
    # a command on pipes and what it starts, and the backend's own helpers.
    repl = await rooms.attacker.spawn(["python3", "-q"])
    screen = Screen(repl)
    try:
        await screen.wait_for(b">>> ")
        await repl.write(
            b"print('seccomp mode', [line.split()[1] for line in open('/proc/self/status')"
            b" if line.startswith('Seccomp:')])\r"
        )
        await screen.wait_for(b"seccomp mode ['2']")
    finally:
        await repl.signal(signal.SIGKILL)
        await repl.wait()
        await screen.close()
    _status, output = await run(
        rooms.attacker,
        ["sh", "-c", "grep Seccomp: /proc/self/status /proc/1/status; "
         "sh -c 'grep Seccomp: /proc/$$/status'"],
    )  # fmt: skip
    assert "/proc/1/status:Seccomp:\t2" in output, output
    assert "/proc/self/status:Seccomp:\t2" in output, output
    assert output.count("Seccomp:\t2") == 3, output
    if isinstance(rooms.attacker, DockerSandbox):
        # Helpers (signal, put_file, stats) are execs as the room's user.
        code, helper = await rooms.attacker._run(["grep", "Seccomp:", "/proc/self/status"])
        assert code == 0 and helper == b"Seccomp:\t2\n", helper


async def test_io_uring_is_refused(rooms: Rooms) -> None:
    results = await raw_syscalls(
        rooms.attacker,
        [
            ("setup", "io_uring_setup", (8, "buf")),
            ("enter", "io_uring_enter", (0xFFFF_FFFF, 0, 0, 0, 0, 0)),
            ("register", "io_uring_register", (0xFFFF_FFFF, 0, 0, 0)),
        ],
    )
    # Docker's own profile (Engine 20.10) would let io_uring_setup through,
    # and gVisor would make a ring of its own.
    assert results == {"setup": "EPERM", "enter": "EPERM", "register": "EPERM"}


async def test_personality_cannot_weaken_the_address_space(
    rooms: Rooms, backend: BackendUnderTest
) -> None:
    results = await raw_syscalls(
        rooms.attacker,
        [
            ("ADDR_NO_RANDOMIZE", "personality", (0x004_0000,)),
            ("READ_IMPLIES_EXEC", "personality", (0x040_0000,)),
            # The kernel reads an int: upper bits must not smuggle a value past.
            ("high bits + ADDR_NO_RANDOMIZE", "personality", (1 << 32 | 0x004_0000,)),
            ("PER_LINUX", "personality", (0,)),
            ("query", "personality", (0xFFFF_FFFF,)),
        ],
    )
    refused = {
        "ADDR_NO_RANDOMIZE": "EPERM",
        "READ_IMPLIES_EXEC": "EPERM",
        "high bits + ADDR_NO_RANDOMIZE": "EPERM",
    }
    # What the policy lets through, gVisor does not implement: EINVAL.
    allowed = "EINVAL" if backend.name == "docker-runsc" else "ok"
    assert results == {**refused, "PER_LINUX": allowed, "query": allowed}
    # The everyday way to ask for it, util-linux's `setarch -R`, fails too.
    status, output = await run(rooms.attacker, ["setarch", "-R", "true"])
    assert status.code != 0 and "failed to set personality" in output, output


async def test_device_nodes_cannot_be_made_or_used(rooms: Rooms) -> None:
    # gVisor has /dev/fuse and /dev/net/tun in its own /dev and makes device
    # nodes without CAP_MKNOD: the backend removes the two, the policy refuses
    # the nodes, so every backend answers alike.
    _status, output = await python(
        rooms.attacker,
        "import os, stat\n"
        "print('fuse', os.path.exists('/dev/fuse'), 'tun', os.path.exists('/dev/net/tun'))\n"
        "for path, kind, dev in (('/home/room/null', stat.S_IFCHR, (1, 3)),\n"
        "                        ('/tmp/fuse', stat.S_IFCHR, (10, 229)),\n"
        "                        ('/dev/shm/tun', stat.S_IFCHR, (10, 200)),\n"
        "                        ('/home/room/sda', stat.S_IFBLK, (8, 0))):\n"
        "    try:\n"
        "        os.mknod(path, kind | 0o600, os.makedev(*dev))\n"
        "        print('mknod', path, 'MADE')\n"
        "    except OSError as e:\n"
        "        print('mknod', path, 'refused', e.strerror)\n"
        "for path in ('/dev/fuse', '/dev/net'):\n"
        "    try:\n"
        "        os.mkdir(path)\n"
        "        print('mkdir', path, 'MADE')\n"
        "    except OSError as e:\n"
        "        print('mkdir', path, 'refused', e.strerror)\n"
        "os.mkfifo('/tmp/fifo')\n"
        "os.mknod('/tmp/plain', stat.S_IFREG | 0o600)\n"
        "print('fifo', stat.S_ISFIFO(os.stat('/tmp/fifo').st_mode),\n"
        "      'file', stat.S_ISREG(os.stat('/tmp/plain').st_mode))\n",
    )
    assert "fuse False tun False" in output, output
    assert output.count("refused Operation not permitted") == 4, output
    assert "MADE" not in output, output
    assert "fifo True file True" in output, output


async def test_system_calls_through_the_i386_abi_are_refused(
    rooms: Rooms, backend: BackendUnderTest
) -> None:
    # Machine code for the 32-bit getpid (int 0x80), where the policy's
    # numbers would mean other calls: the policy allows the native ABI only.
    status, output = await python(
        rooms.attacker,
        "import ctypes, mmap\n"
        "page = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n"
        "page.write(bytes.fromhex('b814000000cd80c3'))\n"
        "address = ctypes.addressof(ctypes.c_char.from_buffer(page))\n"
        "print('i386 getpid', ctypes.CFUNCTYPE(ctypes.c_int)(address)(), flush=True)\n",
    )
    if backend.name == "docker-runsc":
        # gVisor implements no 32-bit ABI: the call fails, the process lives.
        assert status.code == 0 and int(output.split()[-1]) < 0, output
    else:
        assert status.reason is ExitReason.KILLED and status.signal == signal.SIGSYS, status


async def test_a_filter_that_cannot_be_installed_runs_nothing(rooms: Rooms) -> None:
    # runsc's launcher, given a program the kernel refuses (no return at its
    # end): the command must not run, and the reason must be said.
    if not isinstance(rooms.attacker, DockerSandbox):
        pytest.skip("the launcher of the docker backend")
    broken = (b"\0" * 8).hex()
    code, output = await rooms.attacker._run(
        [PYTHON, "-I", "-S", "-c", LAUNCH_FILTERED, broken, "pid", "", "", "touch", "/tmp/ran"]
    )
    assert code == 126, output
    assert b"cannot install the seccomp filter (" in output, output
    assert b"touch not run" in output, output
    _status, listing = await run(rooms.attacker, ["ls", "/tmp"])
    assert "ran" not in listing.split(), listing
    # With the real program it runs the command (and ignores a terminal size
    # where there is no terminal, as stty does).
    code, output = await rooms.attacker._run(
        [PYTHON, "-I", "-S", "-c", LAUNCH_FILTERED, compiled_filter().hex(), "pid", "80", "24",
         "sh", "-c", 'echo "$$"; grep Seccomp: /proc/self/status']
    )  # fmt: skip
    pid, same_pid, mode = output.decode().splitlines()
    assert code == 0 and pid == same_pid and mode == "Seccomp:\t2", output


async def test_an_exec_cannot_be_traced_before_its_filter_is_on(
    rooms: Rooms, backend: BackendUnderTest
) -> None:
    # On runsc the launcher runs unfiltered for a few ms; a room process must
    # not be able to take it over meanwhile. (bwrap: other processes are in
    # other pid namespaces; runc: the filter is on before the command starts.)
    if backend.name != "docker-runsc":
        pytest.skip("only runsc's launcher has a moment without the filter")
    sleeper = await rooms.attacker.spawn(["sleep", "600"], tty=False)
    try:
        _status, output = await python(
            rooms.attacker,
            "import ctypes, os\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            f"print('attach', libc.ptrace(16, {sleeper.pid}, 0, 0), ctypes.get_errno())\n"
            "try:\n"
            f"    open('/proc/{sleeper.pid}/mem', 'r+b')\n"
            "    print('mem OPENED')\n"
            "except OSError as e:\n"
            "    print('mem refused', e.strerror)\n",
        )
        assert f"attach -1 {errno.EPERM}" in output, output
        assert "mem refused Permission denied" in output, output
    finally:
        await sleeper.signal(signal.SIGKILL)
        await sleeper.wait()
