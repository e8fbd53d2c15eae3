"""The exact screen's cost: emulator throughput and server memory per idle REPL.

    .venv/bin/python bench/screen.py [--mib 8] [--repls 200]

a) Throughput: ``--mib`` MiB of each kind of output (``yes``, full-screen
   redraws with colours, mixed coloured text with wide characters, the
   issue's cursor-home redraws without a newline) fed to a
   :class:`~replroom.room.screen.Screen` in 4 KiB chunks, as the relay does,
   until all of it is folded into the serialized screen by the sidecar.
   Target: 2 MiB/s on one core (eight times a room's default output rate).
b) Memory per idle REPL: ``--repls`` screens, each after a session (a
   Python banner, 5 000 lines of coloured output, a prompt), folded as an
   idle REPL is; what Python holds for them (tracemalloc) divided by their
   number, next to the byte replay it replaces (256 KiB once a REPL had
   printed that much). The sidecar is one process for the whole server and
   exits 30 s after its last fold; its RSS while it works is printed beside.

Figures are printed next to their targets, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import tracemalloc
from pathlib import Path

from replroom.room.screen import Emulator, Screen

SIZE = (80, 24)
CHUNK = 4096
REPLAY = 256 * 1024  # what the byte replay kept per REPL


def kinds() -> dict[str, bytes]:
    redraw = b"".join(
        f"\x1b[{row + 1};1H\x1b[3{row % 8}m{row:02d} ".encode() + b"abcdefghij" * 7 + b"\x1b[0m"
        for row in range(24)
    )
    mixed = b"".join(
        f"\x1b[32m{i}\x1b[0m: some text \u00e9 \u4e2d\u6587 \x1b[1mbold\x1b[0m ".encode()
        + b"x" * (i % 60)
        + b"\r\n"
        for i in range(800)
    )
    return {
        "yes": b"y\r\n" * 20_000,
        "full-screen redraws": redraw * 20,
        "mixed text": mixed,
        "cursor-home, no newline": (b"\x1b[H" + b"0123456789" * 9) * 600,
    }


async def throughput(emulator: Emulator, name: str, sample: bytes, total: int) -> float:
    screen = Screen(1000, SIZE, emulator)
    data = sample * (total // len(sample) + 1)
    start = time.perf_counter()
    for at in range(0, total, CHUNK):
        screen.feed(data[at : at + CHUNK], SIZE)
        if screen.raw_bytes > 2**20:
            # Faster than the room's output rate ever is: wait for the emulator,
            # so that what is measured is its rate (a screen would degrade).
            await screen.folded()
    await screen.folded()
    return total / (time.perf_counter() - start) / 2**20


def session() -> bytes:
    lines = b"".join(
        f"\x1b[3{i % 8}m{i:5d}\x1b[0m {'output ' * (i % 9)}\r\n".encode() for i in range(5000)
    )
    banner = b'Python 3.11.2 (main) [GCC 12.2.0] on linux\r\nType "help" for more information.\r\n'
    return banner + b">>> for i in range(5000): print(i)\r\n" + lines + b">>> "


def rss(pid: int | None) -> int:
    if pid is None:
        return 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=8, help="MiB of each kind of output")
    parser.add_argument("--repls", type=int, default=200, help="idle REPLs to measure")
    args = parser.parse_args()
    emulator = Emulator()
    try:
        print(f"a) emulator throughput (fed in {CHUNK // 1024} KiB chunks, folded by the sidecar)")
        for name, sample in kinds().items():
            rate = await throughput(emulator, name, sample, args.mib * 2**20)
            print(f"   {name:26s} {rate:7.1f} MiB/s   (target >= 2 MiB/s)")
        print(f"b) memory per idle REPL ({args.repls} REPLs, one session each)")
        output = session()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        screens = []
        for _ in range(args.repls):
            screen = Screen(1000, SIZE, emulator)
            for at in range(0, len(output), CHUNK):
                screen.feed(output[at : at + CHUNK], SIZE)
            await screen.folded()
            screens.append(screen)
        held = (tracemalloc.get_traced_memory()[0] - before) / args.repls
        tracemalloc.stop()
        sidecar = rss(emulator.pid)
        replay = min(len(output), REPLAY)
        print(f"   session output {len(output) / 1024:.0f} KiB")
        print(
            f"   server memory per idle REPL {held / 1024:6.1f} KiB "
            f"(compressed serialized screen {screens[0].held_bytes / 1024:.1f} KiB)   "
            f"(target < the byte replay's {replay / 1024:.0f} KiB)"
        )
        print(
            f"   the sidecar while it folds: RSS {sidecar / 2**20:.0f} MiB for the whole server "
            "(exits 30 s after its last fold)"
        )
    finally:
        await emulator.close()


if __name__ == "__main__":
    asyncio.run(main())
