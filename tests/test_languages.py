"""The language registry, its quoting, and every REPL on a real pty in the room image."""

from __future__ import annotations

import ast
import fcntl
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from replroom.image import RoomImage, build_image
from replroom.languages import LANGUAGES, Language, UnknownLanguage, get_language
from replroom.sandbox.base import DEFAULT_ENV, SANDBOX_HOME

HOSTILE_PATHS = [
    "/home/room/main.py",
    "relative name.py",
    '/home/room/it\'s "quoted".py',
    "/home/room/$(touch pwned) `id` ${HOME} #{exit}.py",
    "/home/room/back\\slash\\n.py",
    "/home/room/new\nline\r\t\x03\x04\x1b[A.py",
    "/home/room/unicode ✓ é \u2028.py",
    "-starts-with-dash.py",
]


@pytest.mark.fast
def test_registry() -> None:
    assert list(LANGUAGES) == [
        "python", "node", "ruby", "bash", "lua", "php", "perl", "sqlite",
        "scheme", "commonlisp", "elixir", "r",
    ]  # fmt: skip
    for name, language in LANGUAGES.items():
        assert language.name == name
        assert get_language(name) is language
        assert language.packages and language.repl and language.run
        assert language.extension.startswith(".")
        assert language.filename == "main" + language.extension
        assert "{path}" in language.run
        assert language.describe()["editor_mode"] == language.editor_mode
    modes = {language.editor_mode for language in LANGUAGES.values()}
    assert len(modes) == len(LANGUAGES)
    # Only the base image's languages have no pack (docs/image.md).
    assert [name for name, language in LANGUAGES.items() if language.pack is None] == [
        "python",
        "bash",
    ]


@pytest.mark.fast
def test_unknown_language() -> None:
    with pytest.raises(UnknownLanguage) as caught:
        get_language("cobol")
    assert str(caught.value).startswith("unknown language 'cobol' (known: python, node, ruby,")
    # Callers may catch either.
    assert isinstance(caught.value, KeyError) and isinstance(caught.value, ValueError)


@pytest.mark.fast
def test_run_argv_keeps_the_path_one_argument() -> None:
    path = "/home/room/a b; rm -rf ~.py"
    assert get_language("python").run_argv(path) == ("python3", path)
    assert get_language("bash").run_argv(path) == ("bash", path)


@pytest.mark.fast
@pytest.mark.parametrize("path", HOSTILE_PATHS)
@pytest.mark.parametrize("name", [name for name in LANGUAGES if name != "node"])
def test_load_line_is_one_printable_line(name: str, path: str) -> None:
    line = get_language(name).load_line(path)
    # Typed into a line editor: a control character would end the line,
    # interrupt it or edit it, and some editors mangle non-ASCII input.
    assert line.isascii() and line.isprintable(), line


@pytest.mark.fast
@pytest.mark.parametrize("path", HOSTILE_PATHS)
def test_python_load_line_quotes_the_path(path: str) -> None:
    line = get_language("python").load_line(path)
    call = ast.parse(line, mode="eval").body
    assert isinstance(call, ast.Call)
    assert ast.unparse(call.func) == "exec"
    quoted = {ast.literal_eval(node) for node in ast.walk(call) if isinstance(node, ast.Constant)}
    assert path in quoted


@pytest.mark.fast
@pytest.mark.parametrize("path", HOSTILE_PATHS)
def test_bash_load_line_quotes_the_path(path: str) -> None:
    line = get_language("bash").load_line(path)
    assert line.startswith("source ")
    word = line.removeprefix("source ")
    # The host's bash parses the word back: it must be exactly the path.
    parsed = subprocess.run(
        ["bash", "--norc", "-c", f"printf %s {word}"], capture_output=True, check=True
    ).stdout
    expected = path if path.startswith("/") else "./" + path
    assert parsed == expected.encode()


@pytest.mark.parametrize("path", HOSTILE_PATHS)
def test_ruby_load_line_quotes_the_path(image: RoomImage, path: str) -> None:
    line = get_language("ruby").load_line(path)
    assert line.startswith("load ")
    literal = line.removeprefix("load ")
    # The image's ruby parses the literal back: it must be exactly the path.
    argv = ["bwrap", "--ro-bind", str(image.rootfs), "/", "--proc", "/proc", "--dev", "/dev"]
    script = "STDOUT.write(eval(STDIN.read).b)"
    parsed = subprocess.run(
        [*argv, "--unshare-all", "ruby", "-e", script],
        input=literal.encode(),
        capture_output=True,
        check=True,
    ).stdout
    expected = path if path.startswith("/") else "./" + path
    assert parsed == expected.encode("utf-8", "surrogateescape")


@pytest.mark.fast
def test_node_load_line() -> None:
    node = get_language("node")
    assert node.load_line('/home/room/it\'s "quoted" $x.js') == (
        '.load /home/room/it\'s "quoted" $x.js'
    )
    # .load has no quoting at all: refuse what it cannot name rather than run
    # the rest of the line as code.
    for path in ("/home/room/a\n.exit", "/home/room/tab\t.js", " leading.js", "trailing.js "):
        with pytest.raises(ValueError, match="cannot name"):
            node.load_line(path)


@pytest.mark.fast
def test_ready_prompts() -> None:
    python, node, ruby, bash = (get_language(n) for n in ("python", "node", "ruby", "bash"))
    assert python.ready(b"Python 3.11\r\n>>> ")
    assert not python.ready(b">>> def f():\r\n... ")
    assert node.ready(b"Type .help\r\n\x1b[1G\x1b[0J> \x1b[3G")
    assert not node.ready(b"\x1b[1G\x1b[0J... \x1b[5G")
    assert ruby.ready(b"=> 2\r\nirb(main):002:0> ")
    assert not ruby.ready(b"irb(main):003:1> ")
    assert bash.ready(b"\x1b[?2004hroom:~$ ")
    assert not bash.ready(b"room:~$ echo hi\r\nhi\r\n")
    r = get_language("r")
    assert r.ready(b"\x1b[?2004h> ") and r.ready(b"[1] 2\r\n> ")
    assert not r.ready(b"+ ") and not r.ready(b"x <- 1 > ")


# ----------------------------------------------- the REPLs in the room image


@pytest.fixture(scope="module")
def image() -> RoomImage:
    if os.geteuid() != 0 or shutil.which("debootstrap") is None or not shutil.which("bwrap"):
        pytest.skip("running the REPLs needs root, debootstrap (for the image) and bwrap")
    return build_image(progress=lambda _message: None)  # cached after the first build


class Terminal:
    """A REPL from the image in a bwrap sandbox, on a real pty, as user room."""

    def __init__(self, rootfs: Path, home: Path, language: Language) -> None:
        env = {**DEFAULT_ENV, **language.repl_env}
        argv = ["bwrap", "--ro-bind", str(rootfs), "/", "--proc", "/proc", "--dev", "/dev"]
        argv += ["--tmpfs", "/tmp", "--bind", str(home), SANDBOX_HOME, "--chdir", SANDBOX_HOME]
        argv += ["--unshare-all", "--uid", "1000", "--gid", "1000", "--die-with-parent"]
        argv += ["--clearenv"]
        for key, value in env.items():
            argv += ["--setenv", key, value]
        self.language = language
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
        self.process = subprocess.Popen(
            [*argv, *language.repl],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
            # The pty becomes the controlling terminal, as in a real sandbox
            # (bash wants it for job control). The tests start no threads.
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),  # noqa: PLW1509
        )
        os.close(slave)
        self.output = b""

    def wait_ready(self, *, after_line: bool = False, timeout: float = 15) -> bytes:
        """Read until the REPL shows its prompt; return what it printed meanwhile.

        With ``after_line``, only a prompt after a new line counts: node
        redraws its prompt while a line is typed.
        """
        start = len(self.output)
        deadline = time.monotonic() + timeout
        while not self._ready(self.output[start:], after_line):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no prompt after {timeout}s: {self.output[start:]!r}")
            readable, _, _ = select.select([self.master], [], [], remaining)
            if readable:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # EIO: the REPL has exited
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"the REPL exited: {self.output[start:]!r}")
                # A headless client never answers ESC[6n: the REPL must not need it.
                assert b"\x1b[6n" not in chunk, "the REPL asked for the cursor position"
                self.output += chunk
        return self.output[start:]

    def _ready(self, output: bytes, after_line: bool) -> bool:
        if after_line:
            output = output.partition(b"\n")[2]
        return self.language.ready(output)

    def type(self, line: str) -> bytes:
        os.write(self.master, line.encode() + b"\r")
        return self.wait_ready(after_line=True)

    def keys(self, keys: str, until: bytes, timeout: float = 15) -> bytes:
        """Type ``keys`` without Enter; read until the screen shows ``until``."""
        start = len(self.output)
        os.write(self.master, keys.encode())
        deadline = time.monotonic() + timeout
        while until not in self.output[start:]:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {until!r} after {timeout}s: {self.output[start:]!r}")
            readable, _, _ = select.select([self.master], [], [], remaining)
            if readable:
                self.output += os.read(self.master, 65536)
        return self.output[start:]

    def close(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        os.close(self.master)


COLOURS = re.compile(rb"\x1b\[[0-9;]*m")

PROGRAMS = {
    "python": (
        "def greet(name):\n"
        '    message = "hello " + name\n'
        "\n"
        "    return message.upper()\n"
        "\n"
        "\n"
        "class Counter:\n"
        "    start = 41\n"
        "\n"
        "    def next(self):\n"
        "        return self.start + 1\n",
        'print(greet("room"), Counter().next())',
    ),
    "node": (
        "function greet(name) {\n"
        '  const message = "hello " + name;\n'
        "\n"
        "  return message.toUpperCase();\n"
        "}\n"
        "\n"
        "const start = 41;\n"
        "const next = (n) =>\n"
        "  n + 1;\n",
        'console.log(greet("room"), next(start))',
    ),
    "ruby": (
        "class Greeter\n"
        "  def greet(name)\n"
        '    message = "hello " + name\n'
        "\n"
        "    message.upcase\n"
        "  end\n"
        "end\n"
        "\n"
        "START = 41\n",
        'puts "#{Greeter.new.greet("room")} #{START + 1}"',
    ),
    "bash": (
        'greet() {\n  local message="hello $1"\n\n  echo "${message^^}"\n}\nstart=41\n',
        'echo "$(greet room) $((start + 1))"',
    ),
}

# Names a person could give a file, with everything a quoting bug would trip on.
FILE_NAMES = {
    "python": 'it\'s "main" $(x) #{y}\\n\n✓.py',
    "node": 'it\'s "main" $(x) ✓.js',
    "ruby": 'it\'s "main" $(x) #{exit}\\n\n✓.rb',
    "bash": 'it\'s "main" $(exit) `exit`\\n\n✓.sh',
}


@pytest.fixture
def terminal(
    request: pytest.FixtureRequest, image: RoomImage, tmp_path: Path
) -> Iterator[Terminal]:
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o777)
    term = Terminal(image.rootfs, home, get_language(request.param))
    try:
        yield term
    finally:
        term.close()


# The other languages' REPLs run in tests/test_language_contract.py, in rooms.
@pytest.mark.parametrize("terminal", list(PROGRAMS), indirect=True)
def test_repl_loads_a_file_and_keeps_its_definitions(terminal: Terminal, tmp_path: Path) -> None:
    name = terminal.language.name
    banner = terminal.wait_ready()
    assert b"Error" not in banner and b"error" not in banner, banner
    source, call = PROGRAMS[name]
    (tmp_path / "home" / FILE_NAMES[name]).write_text(source)
    loaded = terminal.type(terminal.language.load_line(f"{SANDBOX_HOME}/{FILE_NAMES[name]}"))
    assert b"rror" not in loaded, loaded
    result = terminal.type(call)
    assert b"HELLO ROOM 42" in COLOURS.sub(b"", result), result


@pytest.mark.parametrize("terminal", ["python"], indirect=True)
def test_python_completes_with_tab_without_loading_inspect_first(terminal: Terminal) -> None:
    """The image defers rlcompleter's imports to the first Tab (2.4 MiB per room)."""
    terminal.wait_ready()
    loaded = terminal.type("print(sorted({'inspect', 're'} & set(__import__('sys').modules)))")
    assert b"[]" in loaded, loaded
    terminal.keys("pri\t", until=b"print(")
    terminal.keys("\x15", until=b"\r")  # Ctrl-U: an empty line again
    terminal.type("import os")
    terminal.keys("os.getpi\t", until=b"os.getpid()")
    terminal.keys("\x15", until=b"\r")
    history = terminal.type("print(__import__('readline').get_history_item(1)[:12])")
    assert b"print(sorted" in history, history  # and readline keeps the history


@pytest.mark.fast
def test_the_page_has_an_editor_mode_for_every_language() -> None:
    source = (Path(__file__).parent.parent / "web/src/editor.ts").read_text()
    handled = set(re.findall(r'case "([a-z]+)":', source.partition("function modeFor")[2]))
    missing = {language.editor_mode for language in LANGUAGES.values()} - handled
    assert not missing, f"web/src/editor.ts modeFor() has no case for {missing}"
