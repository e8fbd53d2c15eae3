"""A room's editor files: a small tree of named files per language, each its own Yjs document.

A language's files are a list of (id, path) kept in the rooms database
(``room_files``); each file's text is the editor document
``{room}/{language}/{id}`` (:func:`doc_name`). The id never changes, so a rename
changes the list only and nobody's editor reconnects. A language whose list was
never changed has one file, its default (``main.py`` …, id :data:`DEFAULT_ID`):
rooms made before files existed keep their document as that file's.

Paths are checked here (:func:`check_path`), the one place they enter: they are
written into the sandbox's working directory at Run, below ``/home/room``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import secrets
import zipfile
from collections.abc import Callable
from typing import Protocol

from replroom import protocol
from replroom.languages import get_language
from replroom.protocol import MAX_FILE_DEPTH, MAX_FILE_PATH, ErrorCode, FileInfo
from replroom.room.controls import Refusal
from replroom.storage import Store

log = logging.getLogger(__name__)

DEFAULT_ID = "main"
"""The id of a language's default file, whose document the language had before files."""


class Documents(Protocol):
    """What the files need of the shared editor (:class:`replroom.editor.EditorSync`)."""

    async def text(self, doc_name: str) -> str: ...

    async def create(self, doc_name: str, text: str) -> None: ...

    async def delete_document(self, doc_name: str) -> None: ...


def bad_file(message: str) -> Refusal:
    return Refusal(ErrorCode.BAD_FILE, message)


def check_path(path: str) -> str:
    """``path`` if it may name an editor file, else a ``bad_file`` Refusal saying why.

    Relative, at most MAX_FILE_DEPTH parts of printable characters, no ``.``
    or ``..`` part, no backslash (a Windows separator), no part starting or
    ending with a space: what stays below the working directory and reads the
    same in every language's load line and in a zip.
    """
    if not path or len(path) > MAX_FILE_PATH:
        raise bad_file(f"a file name has 1 to {MAX_FILE_PATH} characters")
    if not path.isprintable() or "\\" in path:
        raise bad_file("a file name may not hold control characters or '\\'")
    if path.startswith("/"):
        raise bad_file("a file name is relative to the room's folder: no leading '/'")
    parts = path.split("/")
    if len(parts) > MAX_FILE_DEPTH:
        raise bad_file(f"at most {MAX_FILE_DEPTH - 1} folders deep")
    for part in parts:
        if part in ("", ".", ".."):
            raise bad_file(f"{path!r}: empty, '.' and '..' parts are not allowed")
        if part != part.strip():
            raise bad_file(f"{path!r}: a part may not start or end with a space")
    return path


def doc_name(room_id: str, language: str, file_id: str) -> str:
    """The editor document holding a file's text."""
    return f"{room_id}/{language}/{file_id}"


def _conflict(path: str, files: list[FileInfo], skip: str | None = None) -> str | None:
    """Why ``path`` cannot be added beside ``files`` (a file or folder of that name), or None."""
    for file in files:
        if file["id"] == skip:
            continue
        other = file["path"]
        if other == path:
            return f"there is already a file {path!r}"
        if other.startswith(path + "/"):
            return f"{path!r} is a folder of {other!r}"
        if path.startswith(other + "/"):
            return f"{other!r} is a file, not a folder"
    return None


class RoomFiles:
    """The editor files of one room, for every language; changes stored before they are told."""

    def __init__(
        self,
        room_id: str,
        store: Store,
        documents: Callable[[], Documents | None],
        max_files: int,
        max_bytes: int,
    ) -> None:
        self.room_id = room_id
        self._store = store
        self._documents = documents
        self.max_files = max_files
        self.max_bytes = max_bytes
        self._files: dict[str, list[FileInfo]] | None = None
        self._lock = asyncio.Lock()  # one change at a time: each is read, checked, stored

    async def load(self) -> None:
        """Read the lists from the database (once)."""
        async with self._lock:
            if self._files is None:
                stored = await self._store.room_files(self.room_id)
                self._files = {
                    language: [{"id": i, "path": p} for i, p in rows]
                    for language, rows in stored.items()
                }

    def listing(self, language: str) -> list[FileInfo]:
        """A language's files, in order (its default file when it has never been changed)."""
        files = (self._files or {}).get(language)
        if files:
            return [{"id": file["id"], "path": file["path"]} for file in files]
        return [{"id": DEFAULT_ID, "path": get_language(language).filename}]

    def find(self, language: str, file_id: str | None) -> FileInfo:
        """The file with this id (None: the language's first), else ``bad_file``."""
        files = self.listing(language)
        if file_id is None:
            return files[0]
        for file in files:
            if file["id"] == file_id:
                return file
        raise bad_file("no such file (another member may have deleted it)")

    def has(self, language: str, file_id: str) -> bool:
        return any(file["id"] == file_id for file in self.listing(language))

    def doc(self, language: str, file_id: str) -> str:
        return doc_name(self.room_id, language, file_id)

    async def texts(self, language: str, override: tuple[str, str] | None = None) -> list[
        tuple[FileInfo, str]
    ]:  # fmt: skip
        """Each file of the language with its text; ``override``: (id, text) for one file."""
        documents = self._editor()
        result = []
        for file in self.listing(language):
            if override is not None and file["id"] == override[0]:
                text = override[1]
            else:
                text = await documents.text(self.doc(language, file["id"]))
            result.append((file, text))
        return result

    def check_size(self, texts: list[tuple[FileInfo, str]], added: int = 0) -> None:
        """Refuse (``files_limit``) when the texts and ``added`` bytes exceed the room's limit."""
        total = sum(len(text.encode()) for _, text in texts) + added
        if total > self.max_bytes:
            raise Refusal(
                ErrorCode.FILES_LIMIT,
                f"the files would take {protocol.size_text(total)}, over this room's limit of "
                f"{protocol.size_text(self.max_bytes)}: shorten or delete some",
            )

    async def create(self, language: str, path: str, content: str) -> FileInfo:
        """Add a file (with ``content``) at the end of the language's list."""
        path = check_path(path)
        async with self._lock:
            files = self.listing(language)
            if len(files) >= self.max_files:
                raise Refusal(
                    ErrorCode.FILES_LIMIT,
                    f"this room allows {self.max_files} files per language: delete one first",
                )
            why = _conflict(path, files)
            if why:
                raise bad_file(why)
            if content:
                self.check_size(await self.texts(language), len(content.encode()))
            file: FileInfo = {"id": secrets.token_urlsafe(9), "path": path}
            # The document first: a member told of the file may open it at once.
            documents = self._editor()
            await documents.create(self.doc(language, file["id"]), content)
            try:
                await self._store_list(language, [*files, file])
            except BaseException:
                with contextlib.suppress(Exception):
                    await documents.delete_document(self.doc(language, file["id"]))
                raise
            return file

    async def rename(self, language: str, file_id: str, path: str) -> FileInfo:
        path = check_path(path)
        async with self._lock:
            files = self.listing(language)
            self.find(language, file_id)  # bad_file if there is no such file
            why = _conflict(path, files, skip=file_id)
            if why:
                raise bad_file(why)
            renamed: FileInfo = {"id": file_id, "path": path}
            await self._store_list(
                language, [renamed if other["id"] == file_id else other for other in files]
            )
            return renamed

    async def delete(self, language: str, file_id: str) -> FileInfo:
        async with self._lock:
            files = self.listing(language)
            file = self.find(language, file_id)
            if len(files) == 1:
                raise bad_file("a language keeps at least one file: rename it or empty it")
            await self._store_list(language, [other for other in files if other["id"] != file_id])
        # After the list: whoever opens it now is refused (the file is unknown). Should
        # this fail, the file is still gone; its document goes with the room.
        try:
            await self._editor().delete_document(self.doc(language, file_id))
        except Exception:
            log.exception("room %s: deleting a file's document failed", self.room_id)
        return file

    async def zip(self, language: str) -> bytes:
        """The language's files, as the editor has them now, in one zip (paths as named)."""
        await self.load()
        texts = await self.texts(language)
        return await asyncio.to_thread(_zip, texts)

    def _editor(self) -> Documents:
        documents = self._documents()
        if documents is None:
            raise Refusal(ErrorCode.FAILED, "the editor is not running")
        return documents

    async def _store_list(self, language: str, files: list[FileInfo]) -> None:
        await self._store.set_files(
            self.room_id, language, [(file["id"], file["path"]) for file in files]
        )
        if self._files is None:
            self._files = {}
        self._files[language] = files


def _zip(texts: list[tuple[FileInfo, str]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for file, text in texts:
            archive.writestr(file["path"], text)
    return buffer.getvalue()
