"""The browser tests' own tools can fail: axe-core finds a real violation, the overflow
check sees a page wider than a phone, and the QR decoder reads what segno drew."""

from __future__ import annotations

import pytest
import segno
from playwright.async_api import Page

from browser import check_screen, decode_qr, serious_violations

URI = "otpauth://totp/Example:alice?secret=JBSWY3DPEHPK3PXP&issuer=Example"


async def test_axe_reports_an_unlabelled_field_and_low_contrast(page: Page) -> None:
    await page.set_content(
        '<html lang="en"><head><title>t</title></head><body><main>'
        '<p style="color:#bbb;background:#fff">faint</p><input type="text">'
        "</main></body></html>"
    )
    violations = await serious_violations(page)
    assert {line.split(" ")[0] for line in violations} == {"color-contrast", "label"}


async def test_a_page_wider_than_a_phone_fails_the_screen_check(page: Page) -> None:
    await page.set_content(
        '<html lang="en"><head><title>t</title></head><body><main>'
        '<div style="width:900px">wide</div></main></body></html>'
    )
    with pytest.raises(AssertionError, match="scrolls sideways"):
        await check_screen(page, "tools-wide")


async def test_the_qr_decoder_reads_the_pixels_segno_drew(page: Page) -> None:
    src = segno.make(URI, error="m").svg_data_uri(scale=4)
    await page.set_content(f'<img id="qr" alt="QR code" src="{src}">')
    assert await decode_qr(page.locator("#qr")) == URI
