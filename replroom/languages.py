"""The languages a room offers, as data: adding one is adding an entry to :data:`LANGUAGES`.

Everything about a language that the image, the sandboxes, the server and the
web client need lives here: the Debian packages that provide it, how to start
its REPL on a terminal, how to run a file, how to load a file into the running
REPL, and how to tell that the REPL waits for input.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

# Control sequences a line editor prints after its prompt (cursor moves, erase,
# bracketed-paste switches): they do not change whether the prompt is there.
_TRAILING_CONTROLS = re.compile(rb"(?:\x1b\[[0-9;?]*[A-Za-z]|[\x07\r])+\Z")


def _frozen(env: Mapping[str, str] | None = None) -> Mapping[str, str]:
    return MappingProxyType(dict(env or {}))


@dataclass(frozen=True)
class Language:
    name: str  # the id used in URLs, the API and the database
    title: str  # what people see in the language picker
    packages: tuple[str, ...]  # Debian packages the room image needs for it
    extension: str
    editor_mode: str  # CodeMirror 6 language name
    repl: tuple[str, ...]  # argv of the interactive REPL, run on a pty
    run: tuple[str, ...]  # argv to run a file; "{path}" is replaced by the file's path
    prompt: re.Pattern[bytes]  # matches the end of the output when the REPL waits for input
    load_format: str  # the load line, with "{path}" for the quoted path
    quote: Callable[[str], str]  # turns a path into a literal of the language
    repl_env: Mapping[str, str] = field(default_factory=_frozen, hash=False)

    @property
    def filename(self) -> str:
        """The editor's default file name in a room, e.g. ``main.py``."""
        return f"main{self.extension}"

    def run_argv(self, path: str) -> tuple[str, ...]:
        """The argv that runs the file at ``path`` (each argument stays one argument)."""
        return tuple(path if arg == "{path}" else arg for arg in self.run)

    def load_line(self, path: str) -> str:
        """The line to type into the running REPL so that it runs the file at ``path``.

        The file's functions, classes (and, except in Ruby, variables) stay
        defined in the REPL afterwards. The line must be typed at a fresh
        prompt and followed by Enter (``\\r`` on a pty). Any path is quoted
        safely: nothing in it can end the line or be run as code.
        """
        return self.load_format.format(path=self.quote(path))

    def ready(self, output: bytes) -> bool:
        """Whether ``output`` (everything the REPL printed so far) ends with its ready prompt."""
        tail = _TRAILING_CONTROLS.sub(b"", output[-512:])
        return self.prompt.search(tail) is not None

    def describe(self) -> dict[str, str]:
        """What a web client needs to offer the language."""
        return {
            "name": self.name,
            "title": self.title,
            "extension": self.extension,
            "editor_mode": self.editor_mode,
            "filename": self.filename,
        }


# ------------------------------------------------------------ quoting


# The load lines are typed into line editors, some of which mangle non-ASCII
# input (see ruby below): every quoting function returns printable ASCII.


def _is_plain(text: str) -> bool:
    return text.isascii() and text.isprintable()


def _utf8_escapes(char: str) -> str:
    # Bytes, not \u: lone surrogates (undecodable file names) have no code point.
    return "".join(f"\\x{byte:02x}" for byte in char.encode("utf-8", "surrogateescape"))


def python_string(text: str) -> str:
    """A Python literal: ascii() escapes every non-ASCII and non-printable character."""
    return ascii(text)


def ruby_string(text: str) -> str:
    """A double-quoted Ruby literal; ``#`` is escaped so that nothing interpolates."""
    out = []
    for char in text:
        if char in '\\"#':
            out.append("\\" + char)
        elif _is_plain(char):
            out.append(char)
        else:
            out.append(_utf8_escapes(char))
    return '"' + "".join(out) + '"'


def shell_word(text: str) -> str:
    """One shell word; ANSI-C quoting ($'...') when the text is not printable ASCII."""
    if _is_plain(text):
        return shlex.quote(text)
    out = []
    for char in text:
        if char in "\\'":
            out.append("\\" + char)
        elif _is_plain(char):
            out.append(char)
        else:
            out.append(_utf8_escapes(char))
    return "$'" + "".join(out) + "'"


def node_load_path(text: str) -> str:
    # Node's .load takes the rest of the line, stripped, as the file name and
    # has no quoting at all: every other path is used as it is.
    if not text.isprintable() or text != text.strip():
        raise ValueError(f"node's .load cannot name this path: {text!r}")
    return text


def _relative_as_path(quote: Callable[[str], str]) -> Callable[[str], str]:
    # Ruby's load and bash's source look a bare name up in $LOAD_PATH / $PATH
    # first; "./" makes them read the file in the working directory.
    def quote_path(path: str) -> str:
        return quote(path if path.startswith("/") else "./" + path)

    return quote_path


# ------------------------------------------------------------ the registry

BASH_PS1 = r"room:\w\$ "

LANGUAGES: dict[str, Language] = {
    language.name: language
    for language in (
        Language(
            name="python",
            title="Python 3",
            packages=("python3",),
            extension=".py",
            editor_mode="python",
            repl=("python3", "-q"),
            run=("python3", "{path}"),
            prompt=re.compile(rb">>> \Z"),
            # compile() with the file name gives tracebacks that point into
            # the file; reading bytes lets Python apply its own source
            # encoding rules. exec() without namespaces defines in the REPL's.
            load_format='exec(compile(open({path}, "rb").read(), {path}, "exec"))',
            quote=python_string,
            # The user's modules would litter /home/room with __pycache__.
            repl_env=_frozen({"PYTHONDONTWRITEBYTECODE": "1"}),
        ),
        Language(
            name="node",
            title="JavaScript (Node.js)",
            packages=("nodejs",),
            extension=".js",
            editor_mode="javascript",
            repl=("node",),
            run=("node", "{path}"),
            prompt=re.compile(rb"(?<![.>])> \Z"),
            # .load types the file into the REPL as one block (editor mode):
            # multi-line functions, top-level await and let/const that stay
            # visible all work, as if the code had been typed. It echoes the
            # file. Like typed code, running a file twice fails on its
            # top-level let/const/class ("already declared"); that is the
            # REPL's own rule, and vm.runInThisContext has it too (V8's REPL
            # mode, via the inspector's Runtime.evaluate, would lift it).
            load_format=".load {path}",
            quote=node_load_path,
        ),
        Language(
            name="ruby",
            title="Ruby",
            packages=("ruby",),  # irb comes with it in bookworm
            extension=".rb",
            editor_mode="ruby",
            # irb's default editor (Reline) asks the terminal for the cursor
            # position (ESC[6n) at every prompt and hangs until it gets an
            # answer: a REPL started while nobody watches never shows its
            # prompt, and on a shared terminal every member's xterm.js
            # answers, the extra answers arriving as typed text ("^[[5;1R").
            # The single-line editor (the readline extension, libedit in
            # Debian) never asks and keeps history, arrow keys and Tab. Its
            # flaw: multi-byte characters typed at the prompt are mangled;
            # code run from a file is not affected.
            repl=("irb", "--nomultiline"),
            run=("ruby", "{path}"),
            prompt=re.compile(rb"irb\([^\r\n]*\):\d+:0> \Z"),
            # Methods, classes and constants stay defined; local variables do
            # not, because load runs the file in its own top-level scope.
            load_format="load {path}",
            quote=_relative_as_path(ruby_string),
        ),
        Language(
            name="bash",
            title="Bash",
            packages=("bash",),
            extension=".sh",
            editor_mode="shell",
            repl=("bash", "--norc", "-i"),
            run=("bash", "{path}"),
            prompt=re.compile(rb"room:[^\r\n]*\$ \Z"),
            load_format="source {path}",
            quote=_relative_as_path(shell_word),
            repl_env=_frozen({"PS1": BASH_PS1}),
        ),
    )
}


class UnknownLanguage(KeyError, ValueError):
    """No language has this name; the message lists the known ones."""

    def __str__(self) -> str:
        # KeyError's own str() would show the message as a quoted repr.
        return str(self.args[0])


def get_language(name: str) -> Language:
    """The language called ``name``; :class:`UnknownLanguage` naming the known ones otherwise."""
    try:
        return LANGUAGES[name]
    except KeyError:
        known = ", ".join(LANGUAGES)
        raise UnknownLanguage(f"unknown language {name!r} (known: {known})") from None
