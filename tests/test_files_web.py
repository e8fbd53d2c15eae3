"""Several files per room in a real browser (Debian's Chromium through Playwright) against
a real server on 127.0.0.1 with real sandboxes (bwrap): a second file made in one page,
edited in another, imported by Run."""

from __future__ import annotations

import asyncio
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.async_api import Dialog, Locator, Page, expect

from tests.client import Server
from tests.web_fixtures import People, RoomPage, link, web_server

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, runtime_dir: Path, room_image: object
) -> Iterator[Server]:
    with web_server(tmp_path_factory, runtime_dir, "files-web-data") as started:
        yield started


def answer_prompts(page: Page, answer: str) -> None:
    """Answer the next prompt (a file's name) with ``answer``."""

    async def accept(dialog: Dialog) -> None:
        await dialog.accept(answer)

    page.once("dialog", accept)


def tab(page: RoomPage, path: str) -> Locator:
    return page.page.locator(".file-tab", has_text=path)


async def test_a_second_file_is_made_switched_to_and_imported_by_run(
    people: People, server: Server
) -> None:
    room = await server.create_room()
    owner = await people.join(room, "owner", "Owner")
    other = await people.join(room, "invite", "Other")
    viewer = await RoomPage.open(await people.context("Viewer"), link(server, room, "spectator"))
    await owner.wait_screen(">>> ")
    await expect(tab(owner, "main.py")).to_have_attribute("aria-selected", "true")

    answer_prompts(owner.page, "helper.py")
    await owner.page.click("#file-new")
    # The maker's page shows the new file; everyone's list has it.
    await expect(tab(owner, "helper.py")).to_have_attribute("aria-selected", "true")
    await expect(tab(other, "helper.py")).to_have_attribute("aria-selected", "false")
    await expect(tab(viewer, "helper.py")).to_be_visible()
    await expect(owner.page.locator("#editor .cm-editor")).to_have_attribute(
        "data-file", await tab(owner, "helper.py").get_attribute("data-file-id") or ""
    )
    await owner.insert_code("def greet():\n    return 'from the ' + 'first helper'\n")

    await tab(owner, "main.py").click()
    await owner.wait_editor("(doc) => doc === ''")
    await owner.insert_code("import helper\nprint(helper.greet())\n")
    await owner.page.click("#run")
    await owner.wait_screen("from the first helper")

    # Another member edits the helper; the next Run has their version.
    await tab(other, "helper.py").click()
    await other.wait_editor_contains("first helper")
    await other.insert_code("def greet():\n    return 'from the ' + 'second helper'\n")
    await owner.page.click(".file-tab:has-text('helper.py')")
    await owner.wait_editor_contains("second helper")
    await tab(owner, "main.py").click()
    await owner.wait_editor_contains("import helper")
    await owner.page.click("#run")
    await other.wait_screen("from the second helper")

    # A spectator sees the files but may not change them (the server refuses anyway).
    for button in ("#file-new", "#file-rename", "#file-delete", "#file-upload"):
        await expect(viewer.page.locator(button)).to_be_disabled()
    await expect(viewer.page.locator("#file-zip")).to_be_enabled()
    await owner.screenshot("files-two")

    # Rename: the same document under its new name, for everyone.
    await tab(other, "helper.py").click()
    await other.wait_editor_contains("second helper")
    answer_prompts(other.page, "tools.py")
    await other.page.click("#file-rename")
    await expect(tab(owner, "tools.py")).to_be_visible()
    await expect(tab(other, "tools.py")).to_have_attribute("aria-selected", "true")
    await other.wait_editor_contains("second helper")

    # The zip holds every file as the editor has it.
    async with owner.page.expect_download() as downloading:
        await owner.page.click("#file-zip")
    saved = await (await downloading.value).path()
    with zipfile.ZipFile(saved) as archive:
        assert sorted(archive.namelist()) == ["main.py", "tools.py"]
        assert "second helper" in archive.read("tools.py").decode()

    # Delete: the page that showed the file moves to the first one.
    await tab(owner, "tools.py").click()
    owner.page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await owner.page.click("#file-delete")
    for page in (owner, other, viewer):
        await expect(page.page.locator(".file-tab")).to_have_count(1)
    await expect(tab(other, "main.py")).to_have_attribute("aria-selected", "true")
    await other.wait_editor_contains("import helper")
    await other.wait_toast("Owner deleted tools.py")
    await expect(owner.page.locator("#file-delete")).to_be_disabled()  # the last file stays
