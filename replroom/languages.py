"""The languages a room offers, as data: adding one is adding an entry to :data:`LANGUAGES`.

Everything about a language that the image, the sandboxes, the server and the
web client need lives here: the Debian packages that provide it, how to start
its REPL on a terminal, how to run a file, how to load a file into the running
REPL, and how to tell that the REPL waits for input.
"""

from __future__ import annotations

import base64
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

# Control sequences a line editor prints after its prompt (cursor moves, erase,
# bracketed-paste switches): they do not change whether the prompt is there.
_TRAILING_CONTROLS = re.compile(rb"(?:\x1b\[[0-9;?]*[A-Za-z]|[\x07\r])+\Z")


def _frozen(env: Mapping[str, str] | None = None) -> Mapping[str, str]:
    return MappingProxyType(dict(env or {}))


LIBRARIES_DIR = Path(__file__).parent / "libraries"


@dataclass(frozen=True)
class Libraries:
    """What a room of the language has preinstalled besides the language itself.

    Built into the language's pack when the ``libraries`` setting is on, each
    from the registry its kind comes from, pinned: Debian packages (the
    suite's versions), a pip requirements file with hashes, an npm project
    with its lock file (both under ``replroom/libraries/``).
    """

    debs: tuple[str, ...] = ()
    pip: str | None = None  # requirements file with --hash lines
    npm: str | None = None  # directory with package.json and package-lock.json
    summary: str = ""  # what people get, for the docs and `image list`


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
    # The language pack that holds ``packages`` (replroom/packs.py), or None
    # when they are in the base image every room starts from.
    pack: str | None = None
    # What Run types instead of the load line ("{load}") when the room has several
    # files of the language: it first makes the REPL forget the modules it loaded
    # from /home/room, so that a helper edited since the last Run is loaded anew.
    refresh_format: str | None = None
    libraries: Libraries | None = None

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


def _escaped(text: str, specials: str, byte_escape: Callable[[int], str]) -> str:
    """``text`` double-quoted: ``specials`` backslash-escaped, other non-plain bytes escaped."""
    out = []
    for char in text:
        if char in specials:
            out.append("\\" + char)
        elif _is_plain(char):
            out.append(char)
        else:
            out.extend(byte_escape(byte) for byte in char.encode("utf-8", "surrogateescape"))
    return '"' + "".join(out) + '"'


def lua_string(text: str) -> str:
    """A Lua literal: three decimal digits per escaped byte, so no digit after one is taken in."""
    return _escaped(text, '\\"', lambda byte: f"\\{byte:03d}")


def php_string(text: str) -> str:
    """A double-quoted PHP literal; ``$`` is escaped so that nothing interpolates."""
    return _escaped(text, '\\"$', lambda byte: f"\\x{byte:02x}")


def perl_string(text: str) -> str:
    """A double-quoted Perl literal; ``$`` and ``@`` are escaped so that nothing interpolates."""
    return _escaped(text, '\\"$@', lambda byte: f"\\x{byte:02x}")


def r_string(text: str) -> str:
    """A double-quoted R literal (its bytes, as the file system names them)."""
    return _escaped(text, '\\"', lambda byte: f"\\x{byte:02x}")


def elixir_string(text: str) -> str:
    """An Elixir string; ``#`` is escaped so that nothing interpolates."""
    _code_points(text, "elixir")
    out = []
    for char in text:
        if char in '\\"#':
            out.append("\\" + char)
        elif _is_plain(char):
            out.append(char)
        else:
            out.append(f"\\u{{{ord(char):x}}}")
    return '"' + "".join(out) + '"'


def sqlite_argument(text: str) -> str:
    """A double-quoted argument of a sqlite3 dot-command (C escapes, octal bytes)."""
    return _escaped(text, '\\"', lambda byte: f"\\{byte:03o}")


def _code_points(text: str, language: str) -> None:
    if any(0xD800 <= ord(char) <= 0xDFFF for char in text):
        raise ValueError(f"{language} cannot name a path that is not UTF-8: {text!r}")


def scheme_string(text: str) -> str:
    """A Guile string literal; other characters as ``\\xHEX;`` code points."""
    _code_points(text, "scheme")
    out = []
    for char in text:
        if char in '\\"':
            out.append("\\" + char)
        elif _is_plain(char):
            out.append(char)
        else:
            out.append(f"\\x{ord(char):x};")
    return '"' + "".join(out) + '"'


def lisp_string(text: str) -> str:
    """A Common Lisp string form; with characters beyond printable ASCII, built from codes."""
    _code_points(text, "common lisp")
    if _is_plain(text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    codes = " ".join(str(ord(char)) for char in text)
    return f"(map 'string #'code-char '({codes}))"


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

# php -a has no Ctrl-C of its own: SIGINT would end the REPL and its state.
# This handler, run before the shell starts, turns it into an exception that
# the shell reports and survives. (A data: URL, so that no file has to be
# added to the pack; the room has no network, so the include setting it needs
# opens nothing else.) The quotes keep the ";" from starting an INI comment.
_PHP_INTERRUPT = 'auto_prepend_file="data://text/plain;base64,{}"'.format(
    base64.b64encode(
        b"<?php pcntl_async_signals(true);"
        b' pcntl_signal(SIGINT, function () { throw new Exception("interrupted"); });'
    ).decode()
)
# The debugger's own Ctrl-C only stops code it is stepping through, not what
# is typed at its prompt: there, it becomes an error the prompt reports.
_PERL_INTERRUPT = 'BEGIN { require "perl5db.pl"; $SIG{INT} = sub { die "interrupted\\n" } }'

BASH_PS1 = r"room:\w\$ "

# Drops the modules and packages imported from /home/room (a folder without
# __init__.py is a namespace package: no __file__, a __path__; left in place it
# would hand `from lib import util` its old submodule) and the import system's
# cache of directory listings, which would miss a file added since. In a
# namespace of its own: nothing is left defined, nothing printed.
_PYTHON_REFRESH = (
    'exec("import sys, importlib\\ndef room(m):\\n try: return any(str(p).startswith('
    "'/home/room/') for p in [getattr(m, '__file__', None) or '',"
    " *(getattr(m, '__path__', None) or ())])\\n except Exception: return False\\n"
    "for n in [n for n, m in list(sys.modules.items()) if room(m)]: del sys.modules[n]\\n"
    'importlib.invalidate_caches()", {{}}); {load}'
)
_NODE_REFRESH = (
    "Object.keys(require.cache).forEach((k) => {{"
    ' if (k.startsWith("/home/room/")) delete require.cache[k]; }})\r{load}'
)

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
            refresh_format=_PYTHON_REFRESH,
            # The user's modules would litter /home/room with __pycache__.
            repl_env=_frozen({"PYTHONDONTWRITEBYTECODE": "1"}),
            libraries=Libraries(
                pip="python.txt", summary="numpy, pandas, matplotlib, requests, sympy"
            ),
        ),
        Language(
            name="node",
            title="JavaScript (Node.js)",
            packages=("nodejs",),
            extension=".js",
            editor_mode="javascript",
            pack="node",
            repl=("node",),
            # Where the node-libs packages are (require() finds them by name).
            repl_env=_frozen({"NODE_PATH": "/usr/local/lib/node_modules"}),
            libraries=Libraries(npm="node", summary="lodash, date-fns"),
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
            # A command of its own line: .load must start one.
            refresh_format=_NODE_REFRESH,
        ),
        Language(
            name="ruby",
            title="Ruby",
            packages=("ruby",),  # irb comes with it in bookworm
            pack="ruby",
            libraries=Libraries(
                debs=("ruby-activesupport", "ruby-rainbow", "ruby-terminal-table"),
                summary="activesupport, rainbow, terminal-table",
            ),
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
            # require_relative's files are kept in $LOADED_FEATURES by their full path.
            refresh_format=(
                '$LOADED_FEATURES.reject! {{ |f| f.start_with?("/home/room/") }}; {load}'
            ),
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
        Language(
            name="lua",
            title="Lua 5.4",
            packages=("lua5.4",),
            pack="lua",
            extension=".lua",
            editor_mode="lua",
            repl=("lua5.4",),
            run=("lua5.4", "{path}"),
            prompt=re.compile(rb"(?<![>])> \Z"),
            # Globals and functions stay defined; the file's locals do not.
            load_format="dofile({path})",
            quote=lua_string,
            # require() keeps modules in package.loaded by name: forget those
            # that are files of the room.
            refresh_format=(
                "for k in pairs(package.loaded) do local f = io.open('/home/room/' .."
                " k:gsub('%.', '/') .. '.lua') if f then f:close() package.loaded[k] = nil"
                " end end {load}"
            ),
        ),
        Language(
            name="php",
            title="PHP",
            packages=("php8.2-cli", "php8.2-readline"),
            pack="php",
            extension=".php",
            editor_mode="php",
            repl=("php", "-d", "allow_url_include=1", "-d", _PHP_INTERRUPT, "-a"),
            run=("php", "{path}"),
            prompt=re.compile(rb"php > \Z"),
            load_format="include {path};",
            quote=php_string,
        ),
        Language(
            name="perl",
            title="Perl",
            packages=("perl", "libterm-readline-gnu-perl"),
            pack="perl",
            extension=".pl",
            editor_mode="perl",
            # Perl has no REPL of its own; its debugger on an empty program
            # is the usual one (history and editing through GNU readline).
            repl=("perl", "-de0"),
            run=("perl", "{path}"),
            prompt=re.compile(rb"DB<+\d+>+ \Z"),
            load_format="do {path}; print $@ if $@;",
            quote=perl_string,
            # require() keeps what it loaded in %INC: forget the room's files.
            refresh_format=(
                "delete $INC{{$_}} for grep {{ $INC{{$_}} =~ m{{^(?:/home/room/|\\./)}} }}"
                " keys %INC; {load}"
            ),
            # No underlined prompt: the debugger's "ornaments".
            repl_env=_frozen({"PERL_RL": "Gnu o=0", "PERL5DB": _PERL_INTERRUPT}),
        ),
        Language(
            name="sqlite",
            title="SQLite",
            packages=("sqlite3",),
            pack="sqlite",
            extension=".sql",
            editor_mode="sql",
            repl=("sqlite3",),
            run=("sh", "-c", 'exec sqlite3 -bail :memory: < "$1"', "sqlite3", "{path}"),
            prompt=re.compile(rb"sqlite> \Z"),
            load_format=".read {path}",
            quote=sqlite_argument,
        ),
        Language(
            name="scheme",
            title="Scheme (Guile)",
            packages=("guile-3.0",),
            pack="scheme",
            extension=".scm",
            editor_mode="scheme",
            repl=("guile",),
            run=("guile", "{path}"),
            # " [1]" after an error or Ctrl-C: the debugger's level.
            prompt=re.compile(rb"scheme@\([^)\r\n]*\)(?: \[\d+\])?> \Z"),
            load_format="(load {path})",
            quote=scheme_string,
            # Compiling each loaded file would write to ~/.cache and print notes.
            repl_env=_frozen({"GUILE_AUTO_COMPILE": "0"}),
        ),
        Language(
            name="commonlisp",
            title="Common Lisp (SBCL)",
            packages=("sbcl",),
            pack="commonlisp",
            extension=".lisp",
            editor_mode="commonlisp",
            repl=("sbcl", "--noinform"),
            run=("sbcl", "--script", "{path}"),
            # "0] " after an error or Ctrl-C: the debugger's level.
            prompt=re.compile(rb"(?:\A|\n)(?:\*|\d+\]) \Z"),
            load_format="(load {path})",
            quote=lisp_string,
        ),
        Language(
            name="elixir",
            title="Elixir",
            packages=("elixir",),
            pack="elixir",
            extension=".exs",
            editor_mode="elixir",
            # +Bc: Ctrl-C interrupts the running evaluation (the shell and its
            # variables stay) instead of opening the emulator's BREAK menu.
            repl=("iex", "--erl", "+Bc"),
            run=("elixir", "{path}"),
            prompt=re.compile(rb"iex\(\d+\)> \Z"),
            # The file's modules and its variables stay defined.
            load_format="import_file({path})",
            quote=elixir_string,
        ),
        Language(
            name="r",
            title="R",
            packages=("r-base-core",),
            pack="r",
            extension=".R",
            editor_mode="r",
            repl=("R", "--no-save", "--no-restore", "--quiet"),
            run=("Rscript", "{path}"),
            # "> " at a line start; readline switches bracketed paste on before it.
            prompt=re.compile(rb"(?:\A|\n)(?:\x1b\[\?2004h)?> \Z"),
            load_format="source({path})",
            quote=r_string,
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
