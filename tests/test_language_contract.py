"""Every language meets the same contract, in a real room of a real server.

Prompt, evaluate, Run of a multi-line file (its definitions stay usable),
Ctrl-C of a busy loop, restart, state kept across a language switch, and an
out-of-memory kill reported at the default 256 MiB limit. Every language runs
on bwrap; a sample runs on docker+runc when a Docker Engine is there.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from replroom.config import Settings
from replroom.image import RoomImage, build_image
from replroom.languages import LANGUAGES
from tests.client import RoomClient, Server

pytestmark = pytest.mark.timeout(240)

ALL_LANGUAGES = ",".join(LANGUAGES)


@dataclass(frozen=True)
class Contract:
    prompt: str  # what the prompt shows
    program: str  # a file with a multi-line function and a global value
    call: str  # a line that uses both and prints HELLO ROOM 42
    spin: str  # prints "spin", then loops until interrupted
    keep: str  # a line that makes some state
    kept: str  # a line that prints "kept 7" from that state
    hog: str  # a line that allocates until the kernel kills the REPL
    interrupted: str = ""  # the prompt after Ctrl-C, if not the usual one


CONTRACTS: dict[str, Contract] = {
    "python": Contract(
        ">>> ",
        'def greet(name):\n    message = "hello " + name\n\n    return message.upper()\n\n'
        "start = 41\n",
        'print(greet("room"), start + 1)',
        'print("spin"); exec("while True: pass")',
        "state = 7",
        'print("kept", state)',
        'hog = []; exec("while True: hog.append(bytearray(1 << 20))")',
    ),
    "node": Contract(
        "> ",
        'function greet(name) {\n  const message = "hello " + name;\n\n'
        "  return message.toUpperCase();\n}\n\nvar start = 41;\n",
        'console.log(greet("room") + " " + (start + 1))',
        'console.log("spin"); while (true) {}',
        "var state = 7",
        'console.log("kept " + state)',
        "var hog = []; while (true) hog.push(Buffer.alloc(1 << 20, 1))",
    ),
    "ruby": Contract(
        "> ",
        'def greet(name)\n  message = "hello " + name\n\n  message.upcase\nend\n\n$start = 41\n',
        'puts "#{greet("room")} #{$start + 1}"',
        'puts "spin"; loop {}',
        "$state = 7",
        'puts "kept #{$state}"',
        'hog = []; loop { hog << "x" * (1 << 20) }',
    ),
    "bash": Contract(
        "$ ",
        'greet() {\n  local message="hello $1"\n\n  echo "${message^^}"\n}\nstart=41\n',
        'echo "$(greet room) $((start + 1))"',
        "echo spin; while :; do :; done",
        "state=7",
        'echo "kept $state"',
        "hog=x; while :; do hog=$hog$hog; done",
    ),
    "lua": Contract(
        "> ",
        'function greet(name)\n  local message = "hello " .. name\n\n'
        "  return string.upper(message)\nend\n\nstart = 41\n",
        'print(greet("room") .. " " .. (start + 1))',
        'print("spin") while true do end',
        "state = 7",
        'print("kept " .. state)',
        'hog = {} while true do hog[#hog + 1] = string.rep("x", 1 << 20) .. #hog end',
    ),
    "php": Contract(
        "php > ",
        '<?php\nfunction greet($name) {\n    $message = "hello " . $name;\n\n'
        "    return strtoupper($message);\n}\n\n$start = 41;\n",
        'echo greet("room") . " " . ($start + 1) . "\\n";',
        'echo "spin\\n"; while (true) {}',
        "$state = 7;",
        'echo "kept $state\\n";',
        '$hog = []; while (true) $hog[] = str_repeat("x", 1 << 20) . count($hog);',
    ),
    "perl": Contract(
        "DB<",
        'sub greet {\n    my ($name) = @_;\n    my $message = "hello " . $name;\n\n'
        "    return uc $message;\n}\n\n$start = 41;\n",
        'print greet("room") . " " . ($start + 1) . "\\n"',
        'print "spin\\n"; 1 while 1',
        "$state = 7",
        'print "kept $state\\n"',
        'push @hog, "x" x (1 << 20) while 1',
    ),
    "sqlite": Contract(
        "sqlite> ",
        "CREATE TABLE greeting(name TEXT);\nINSERT INTO greeting VALUES ('hello room');\n\n"
        "CREATE VIEW shout AS\n  SELECT upper(name) AS message FROM greeting;\n",
        "SELECT message || ' ' || (41 + 1) FROM shout;",
        "SELECT 'spin'; WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
        "SELECT count(*) FROM c;",
        "CREATE TABLE state(n); INSERT INTO state VALUES (7);",
        "SELECT 'kept ' || n FROM state;",
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
        "SELECT length(group_concat(randomblob(1000))) FROM c;",
    ),
    "scheme": Contract(
        "scheme@(guile-user)",
        '(define (greet name)\n  (let ((message (string-append "hello " name)))\n\n'
        "    (string-upcase message)))\n\n(define start 41)\n",
        '(begin (display (greet "room")) (display " ") (display (+ start 1)) (newline))',
        '(begin (display "spin") (newline) (let loop () (loop)))',
        "(define state 7)",
        '(begin (display "kept ") (display state) (newline))',
        "(define hog '()) (let loop () (set! hog (cons (make-string 1048576 #\\a) hog)) (loop))",
    ),
    "commonlisp": Contract(
        "* ",
        '(defun greet (name)\n  (let ((message (concatenate \'string "hello " name)))\n\n'
        "    (string-upcase message)))\n\n(defparameter *start* 41)\n",
        '(format t "~a ~a~%" (greet "room") (+ *start* 1))',
        '(progn (format t "spin~%") (finish-output) (loop))',
        "(defparameter *state* 7)",
        '(format t "kept ~a~%" *state*)',
        "(defparameter *hog* nil) (loop (push (make-array 1048576 :element-type "
        "'(unsigned-byte 8) :initial-element 1) *hog*))",
        interrupted="0] ",  # the debugger, with the state (and an abort restart)
    ),
    "elixir": Contract(
        "iex(",
        'defmodule Room do\n  def greet(name) do\n    message = "hello " <> name\n\n'
        "    String.upcase(message)\n  end\n\n  def start, do: 41\nend\n",
        # Modules outlive an interrupt; the shell's variables do not (iex's own rule).
        'IO.puts(Room.greet("room") <> " " <> Integer.to_string(Room.start() + 1))',
        'IO.puts("spin"); Stream.repeatedly(fn -> :ok end) |> Stream.run()',
        "state = 7",
        'IO.puts("kept #{state}")',
        "Enum.reduce(Stream.iterate(0, &(&1 + 1)), [], "
        'fn i, acc -> [:binary.copy("x", 1048576) <> "#{i}" | acc] end)',
    ),
    "r": Contract(
        "> ",
        'greet <- function(name) {\n  message <- paste("hello", name)\n\n'
        "  toupper(message)\n}\n\nstart <- 41\n",
        'cat(greet("room"), start + 1, "\\n")',
        'cat("spin\\n"); while (TRUE) {}',
        "state <- 7",
        'cat("kept", state, "\\n")',
        "hog <- list(); while (TRUE) hog[[length(hog) + 1]] <- rnorm(131072)",
    ),
}

BACKENDS = {
    "bwrap": {"REPLROOM_BACKEND": "bwrap"},
    "docker-runc": {"REPLROOM_BACKEND": "docker", "REPLROOM_DOCKER_RUNTIME": "runc"},
}
# What docker+runc runs besides bwrap: one language of the base image and packs
# of different kinds (a C interpreter, a compiler-runtime, a big runtime).
DOCKER_SAMPLE = ("python", "lua", "commonlisp", "r")


def test_every_language_has_a_contract() -> None:
    assert set(CONTRACTS) == set(LANGUAGES)
    assert len(LANGUAGES) >= 12


@pytest.fixture(scope="module")
def all_languages_image() -> RoomImage:
    """The room image with every language's pack (cached by content hash, like the image)."""
    if os.geteuid() != 0:
        pytest.skip("building the language packs needs root")
    settings = Settings(languages=tuple(LANGUAGES))
    docker = bool(os.environ.get("DOCKER_HOST"))
    return build_image(settings, docker=docker, progress=lambda _message: None)


@pytest.fixture(scope="module", params=list(BACKENDS))
def server(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    runtime_dir: Path,
    all_languages_image: object,
) -> Iterator[Server]:
    if request.param != "bwrap" and not os.environ.get("DOCKER_HOST"):
        pytest.skip("no Docker Engine: run scripts/dockerd start and export DOCKER_HOST")
    env = {**BACKENDS[request.param], "REPLROOM_LANGUAGES": ALL_LANGUAGES}
    started = Server(tmp_path_factory.mktemp("data"), runtime_dir, env=env)
    started.backend_name = request.param  # type: ignore[attr-defined]
    started.start()
    yield started
    started.stop()


@pytest.fixture
async def member(server: Server, language: str) -> AsyncIterator[RoomClient]:
    if getattr(server, "backend_name", "") != "bwrap" and language not in DOCKER_SAMPLE:
        pytest.skip("docker+runc runs a sample of the languages")
    room = await server.create_room()
    client = await RoomClient.connect(server, room["id"], room["invite_token"], cols=120)
    await client.wait_output(">>> ")
    if language != "python":
        await switch(client, language)
    yield client
    await client.close()


async def switch(client: RoomClient, language: str) -> None:
    seen = len(client.messages)
    await client.send({"type": "language", "language": language})
    await client.wait_message("language", language=language, after=seen)
    await client.wait_message("terminal", language=language, reset=True, after=seen)
    await client.wait_output(CONTRACTS[language].prompt)


async def line(client: RoomClient, text: str, expected: str) -> int:
    """Type a line and wait for ``expected`` after it; return where the output ended."""
    at = len(client.output)
    await client.type("\x15" + text + "\r")
    return await client.wait_output(expected, after=at)


@pytest.mark.parametrize("language", list(CONTRACTS))
async def test_prompt_run_and_interrupt(member: RoomClient, language: str) -> None:
    contract = CONTRACTS[language]
    assert contract.prompt.encode() in member.output
    await member.send({"type": "run", "code": contract.program, "language": language})
    await line(member, contract.call, "HELLO ROOM 42")
    # Ctrl-C stops a busy loop and the REPL's state is still there.
    at = await line(member, contract.spin, "spin\r\n")
    await member.type("\x03")
    await member.wait_output(contract.interrupted or contract.prompt, after=at)
    await line(member, contract.call, "HELLO ROOM 42")


@pytest.mark.parametrize("language", list(CONTRACTS))
async def test_state_kept_across_a_switch_then_restart(member: RoomClient, language: str) -> None:
    contract = CONTRACTS[language]
    other = "bash" if language == "python" else "python"
    await line(member, contract.keep, contract.prompt)
    await switch(member, other)
    await switch(member, language)
    await line(member, contract.kept, "kept 7")
    at, resets, seen = len(member.output), member.resets, len(member.messages)
    await member.send({"type": "restart"})
    await member.wait_message("status", repl="running", after=seen)
    if member.resets != resets:
        at = 0  # the restart cleared the screen
    await member.wait_output(contract.prompt, after=at)
    await line(member, contract.kept.replace("kept", "after"), contract.prompt)


@pytest.mark.parametrize("language", list(CONTRACTS))
async def test_out_of_memory_is_reported(member: RoomClient, language: str) -> None:
    contract = CONTRACTS[language]
    at = len(member.output)
    await member.type("\x15" + contract.hog + "\r")
    notice = await member.wait_message("notice", level="warning")
    assert "out of memory (limit 256 MiB)" in notice["text"], notice
    await member.wait_output(contract.prompt, after=at)
    await line(member, contract.keep, contract.prompt)


LIBRARY_CHECKS = {
    "python": (
        "import numpy, pandas, matplotlib, sympy, requests; matplotlib.use('Agg'); "
        "import matplotlib.pyplot as plt; plt.plot([1, 2]); "
        "print('libs', int(numpy.arange(5).sum()), pandas.Series([1, 2]).sum(), "
        "sympy.expand((sympy.Symbol('x') + 1) ** 2))",
        "libs 10 3 x**2 + 2*x + 1",
    ),
    "node": (
        'console.log("libs " + require("lodash").chunk([1, 2, 3, 4], 2).length + " " + '
        'require("date-fns").format(new Date(2020, 0, 2), "yyyy-MM-dd"))',
        "libs 2 2020-01-02",
    ),
    "ruby": (
        'require "active_support/all"; require "rainbow"; require "terminal-table"; '
        'puts "libs #{"room".pluralize} #{defined?(Terminal::Table)} #{Rainbow("x").red.size}"',
        "libs rooms constant 10",
    ),
}


@pytest.mark.parametrize("language", list(LIBRARY_CHECKS))
async def test_the_usual_libraries_are_there(member: RoomClient, language: str) -> None:
    check, expected = LIBRARY_CHECKS[language]
    await line(member, check, expected)
