"""The plots panel in a real browser (Debian's Chromium) against a real server with
bwrap rooms: a plot one member draws shows for another and for a late joiner; an
image over the cap is refused at once with a clear message; an SVG stays an image."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.async_api import expect

from tests.client import Server
from tests.test_plots import MAX_BYTES, draw_line, png
from tests.web_fixtures import People, RoomPage, web_server

pytestmark = pytest.mark.timeout(240)

# The plot shown large, as the page decoded it: its width, or 0 until it is.
NATURAL_WIDTH_JS = "() => { const i = document.querySelector('#plot-image');"
NATURAL_WIDTH_JS += " return i && i.src.startsWith('blob:') && i.complete ? i.naturalWidth : 0; }"


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, runtime_dir: Path, room_image: object
) -> Iterator[Server]:
    with web_server(
        tmp_path_factory, runtime_dir, "plots-web", env={"REPLROOM_PLOT_MAX_BYTES": str(MAX_BYTES)}
    ) as started:
        yield started


async def wait_plot_width(page: RoomPage, width: int) -> None:
    await page.page.wait_for_function(f"() => ({NATURAL_WIDTH_JS})() === {width}", timeout=60_000)


async def test_a_plot_shows_for_every_member_and_a_late_joiner(
    people: People, server: Server
) -> None:
    room = await server.create_room()
    ada = await people.join(room, "owner", "Ada")
    bob = await people.join(room, "invite", "Bob")
    await ada.wait_screen(">>> ")
    await expect(bob.page.locator("#plots-toggle")).to_be_hidden()

    await ada.type_terminal(draw_line(png(30, 20)).replace("\r", "\n"))
    for page in (ada, bob):
        await expect(page.page.locator("#plots")).to_be_visible()
        await wait_plot_width(page, 30)
        await expect(page.page.locator("#plot-caption")).to_contain_text("Plot 1 by Ada")
        download = page.page.locator("#plot-download")
        await expect(download).to_have_attribute("download", "plot-1.png")
    await bob.screenshot("plots-panel")

    # A second plot becomes the large one; the first stays in the history.
    await ada.type_terminal(draw_line(png(40, 10), "2.png").replace("\r", "\n"))
    await wait_plot_width(bob, 40)
    await expect(bob.page.locator("#plot-history li")).to_have_count(2)
    await bob.page.locator("#plot-history li button").first.click()
    await wait_plot_width(bob, 30)

    late = await people.join(room, "invite", "Late")
    await expect(late.page.locator("#plots")).to_be_visible()
    await expect(late.page.locator("#plot-history li")).to_have_count(2)
    await wait_plot_width(late, 40)

    # A click enlarges it, and another closes it again.
    await late.page.locator("#plot-image").click()
    zoom = late.page.locator("#plot-zoom")
    await expect(zoom).to_be_visible()
    assert await late.page.evaluate("document.querySelector('#plot-zoomed').naturalWidth") == 40
    await zoom.click()
    await expect(zoom).to_be_hidden()
    for page in (ada, bob, late):
        assert page.errors == []


async def test_an_image_over_the_cap_is_refused_at_once(people: People, server: Server) -> None:
    room = await server.create_room()
    ada = await people.join(room, "owner", "Ada")
    bob = await people.join(room, "invite", "Bob")
    await ada.wait_screen(">>> ")
    await ada.type_terminal(draw_line(png(), "big.png", padding=MAX_BYTES).replace("\r", "\n"))
    expected = "plot refused: the image is 64.1 KiB, over the limit of 64 KiB"
    for page in (ada, bob):
        await page.page.wait_for_function(
            "(text) => window.replroomToasts.some((t) => t.includes(text))", arg=expected
        )
        await expect(page.page.locator("#plots-toggle")).to_be_hidden()


async def test_an_svg_with_a_script_is_shown_as_an_image_only(
    people: People, server: Server
) -> None:
    room = await server.create_room()
    ada = await people.join(room, "owner", "Ada")
    await ada.wait_screen(">>> ")
    svg = (
        b'<svg xmlns="http://www.w3.org/2000/svg" width="24" height="12">'
        b"<script>parent.replroomPwned = 1; window.top.replroomPwned = 1</script>"
        b'<rect width="24" height="12" fill="red"/></svg>'
    )
    await ada.type_terminal(draw_line(svg, "x.svg").replace("\r", "\n"))
    await wait_plot_width(ada, 24)
    await expect(ada.page.locator("#plot-download")).to_have_attribute("download", "plot-1.svg")
    assert await ada.page.evaluate("document.querySelectorAll('svg, iframe, object').length") == 0
    assert await ada.page.evaluate("window.replroomPwned") is None
