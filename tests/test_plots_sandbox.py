"""Sandbox.take_files on every backend: sizes looked at before reading, nothing followed out."""

from __future__ import annotations

import pytest

from replroom.sandbox import Sandbox
from tests.sandboxes import BackendUnderTest, python

pytestmark = pytest.mark.parametrize(
    "backend", ["bwrap", "docker-runc", "docker-runsc"], indirect=True
)

DIR = "/tmp/.replroom/plots"


async def make(sandbox: Sandbox, code: str) -> None:
    status, output = await python(
        sandbox, f"import os\nos.makedirs({DIR!r}, exist_ok=True)\nos.chdir({DIR!r})\n{code}"
    )
    assert status.returncode == 0, output


async def test_takes_files_in_name_order_and_removes_them(
    backend: BackendUnderTest, sandbox: Sandbox
) -> None:
    await make(
        sandbox,
        "open('2-b.png', 'wb').write(b'second')\n"
        "open('1-a.png', 'wb').write(b'first' * 1000)\n"
        "open('.3-c.png', 'wb').write(b'being written')\n"
        "os.mkdir('sub')\n",
    )
    taken = await sandbox.take_files(DIR, 1 << 20, 10)
    assert [(t.name, t.size, t.data) for t in taken] == [
        ("1-a.png", 5000, b"first" * 1000),
        ("2-b.png", 6, b"second"),
    ]
    # Taken files are gone; the hidden one and the directory stay.
    assert await sandbox.take_files(DIR, 1 << 20, 10) == []
    _, output = await python(sandbox, f"import os; print(sorted(os.listdir({DIR!r})))")
    assert output.strip() == "['.3-c.png', 'sub']"


async def test_over_the_cap_is_removed_unread(backend: BackendUnderTest, sandbox: Sandbox) -> None:
    await make(
        sandbox, "open('big.png', 'wb').write(b'x' * 70000)\nopen('ok.png', 'wb').write(b'y')"
    )
    taken = await sandbox.take_files(DIR, 65536, 10)
    assert [(t.name, t.size, t.data) for t in taken] == [
        ("big.png", 70000, None),
        ("ok.png", 1, b"y"),
    ]
    assert await sandbox.take_files(DIR, 65536, 10) == []


async def test_count_leaves_the_rest_for_later(backend: BackendUnderTest, sandbox: Sandbox) -> None:
    await make(sandbox, "for i in range(5): open(f'{i}.png', 'wb').write(bytes([i]))")
    first = await sandbox.take_files(DIR, 1024, 3)
    second = await sandbox.take_files(DIR, 1024, 3)
    assert [t.name for t in first] == ["0.png", "1.png", "2.png"]
    assert [(t.name, t.data) for t in second] == [("3.png", b"\x03"), ("4.png", b"\x04")]


async def test_symlinks_and_odd_names_are_not_read(
    backend: BackendUnderTest, sandbox: Sandbox
) -> None:
    await make(
        sandbox,
        "os.symlink('/etc/passwd', 'passwd.png')\n"
        "open('bad name.png', 'wb').write(b'x')\n"
        "os.mkfifo('fifo.png')\n"
        "open('good.png', 'wb').write(b'g')\n",
    )
    taken = await sandbox.take_files(DIR, 1024, 10)
    assert [(t.name, t.data) for t in taken] == [("good.png", b"g")]
    _, output = await python(sandbox, f"import os; print(os.listdir({DIR!r}))")
    assert output.strip() == "[]"


async def test_a_symlinked_directory_holds_nothing(
    backend: BackendUnderTest, sandbox: Sandbox
) -> None:
    status, output = await python(
        sandbox,
        "import os; os.makedirs('/tmp/.replroom'); os.symlink('/etc', '/tmp/.replroom/plots')",
    )
    assert status.returncode == 0, output
    assert await sandbox.take_files(DIR, 1 << 20, 10) == []


async def test_a_missing_directory_holds_nothing(
    backend: BackendUnderTest, sandbox: Sandbox
) -> None:
    assert await sandbox.take_files(DIR, 1 << 20, 10) == []
