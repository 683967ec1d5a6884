"""The page in a real browser: `fcnseg serve` in a subprocess, Debian's headless chromium driven by
Playwright: upload an image, wait for the overlay, check the legend, the pixels and the download.

Playwright cannot download its own browser on our machines; `make test` installs Debian's chromium
(apt-get) and this test points Playwright at it. Under CI=true a missing browser is a
failure, not a skip; elsewhere (a user who is not root, say) the test is skipped with that reason.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from test_serve_api import META, tiny_checkpoint
from test_serve_process import free_port, start_server, wait_healthy

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    """Debian's chromium; required under CI=true (make test installs it there), else skipped with the reason."""
    found = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if found is None:
        if os.environ.get("CI") == "true" and not os.environ.get("FCNSEG_SKIP_BROWSER_TEST"):
            pytest.fail(
                "the browser test needs Debian's chromium: apt-get install chromium (make test does this under CI=true)"
            )
        pytest.skip("chromium is not installed (apt-get install chromium, as root, runs this test)")
    return found


def scene(path: Path, size=(96, 64)) -> Path:
    """A small picture with a few flat regions, so the tiny model predicts several classes."""
    img = Image.new("RGB", size, (90, 140, 200))
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 40, 95, 63], fill=(110, 110, 105))
    draw.ellipse([10, 8, 40, 38], fill=(40, 130, 40))
    draw.rectangle([55, 25, 85, 50], fill=(200, 30, 30))
    img.save(path)
    return path


def drive_page(url: str, image: Path, screenshot: Path, tmp: Path, opacity: int | None = None) -> dict:
    """Open the page, upload ``image``, wait for the overlay; returns what the page shows."""
    from playwright.sync_api import sync_playwright

    problems = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900}, accept_downloads=True)
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
            page.on("requestfailed", lambda req: problems.append(f"request failed: {req.url}"))
            page.goto(url)
            page.wait_for_function("document.getElementById('model-name').textContent !== 'loading model…'")
            page.set_input_files("#file", str(image))
            page.wait_for_selector('#overlay[data-ready="true"]', timeout=120_000)
            shown = {
                "model": page.inner_text("#model-name"),
                "summary": page.inner_text("#model-summary"),
                "norm": page.inner_text("#model-norm"),
                "trained": page.inner_text("#model-trained"),
                "classes": page.locator("#classes li").all_inner_texts(),
                "legend": page.locator("#legend li .name").all_inner_texts(),
                "shares": page.locator("#legend li .share").all_inner_texts(),
                "timing": page.inner_text("#timing"),
                "status": page.inner_text("#status"),
            }
            if opacity is not None:
                read_canvas = """() => {
                    const c = document.getElementById('overlay');
                    return {w: c.width, h: c.height,
                            data: Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)};
                }"""
                page.locator("#opacity").fill(str(opacity))
                shown["canvas"] = page.evaluate(read_canvas)  # background class left untinted
                page.check("#tint-background")
                shown["canvas_tinted"] = page.evaluate(read_canvas)
            with page.expect_download() as download:
                page.click("#download")
            shown["download_name"] = download.value.suggested_filename
            saved = tmp / "downloaded_mask.png"
            download.value.save_as(saved)
            shown["download"] = saved
            page.screenshot(path=str(screenshot), full_page=True)
            shown["problems"] = list(problems)
            # a broken upload shows its one-line error on the page
            bad = tmp / "broken.png"
            bad.write_bytes(b"this is not a picture")
            page.set_input_files("#file", str(bad))
            page.wait_for_selector('body[data-state="error"]', timeout=60_000)
            shown["error"] = page.inner_text("#status")
            # ... and nothing of the previous image is left beside the error
            shown["after_error"] = page.evaluate("""() => {
                const c = document.getElementById('overlay'), a = document.getElementById('download');
                return {canvas: [c.width, c.height], filled: c.parentElement.classList.contains('filled'),
                        legend: Array.from(document.querySelectorAll('#legend li')).map(li => li.textContent),
                        href: a.getAttribute('href'), disabled: a.classList.contains('disabled'),
                        timing: document.getElementById('timing').textContent};
            }""")
            # the API's Swagger page renders from this server alone
            requested, before = [], len(problems)
            page.on("request", lambda req: requested.append(req.url))
            page.goto(url + "docs")
            page.wait_for_selector(".swagger-ui .opblock", timeout=60_000)
            shown["docs_requests"] = requested
            shown["docs_problems"] = problems[before:]
        finally:
            browser.close()
    return shown


@pytest.mark.slow
def test_page_in_headless_chromium(tmp_path):
    from fcnseg.inference import Segmenter
    from fcnseg.viz import colorize

    chromium_path()
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt", trained_on="shapes train (400 images)")
    image = scene(tmp_path / "street.png")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the server runs it: one thread per inference
    try:
        expected = Segmenter.from_checkpoint(ckpt).predict(image)
    finally:
        torch.set_num_threads(threads)
    present = [META["class_names"][c] for c in np.unique(expected)]
    assert len(present) >= 2

    port = free_port()
    proc = start_server(ckpt, port, "--no-access-log")
    try:
        wait_healthy(proc, port)
        shown = drive_page(f"http://127.0.0.1:{port}/", image, tmp_path / "page.png", tmp_path, opacity=100)
    finally:
        proc.terminate()
        proc.communicate(timeout=60)

    assert shown["problems"] == []
    assert shown["model"] == "fcn8s" and "5 classes" in shown["summary"] and "ImageNet" in shown["summary"]
    assert "0.485" in shown["norm"] and "0.229" in shown["norm"]
    assert len(shown["classes"]) == 5 and "sky" in shown["classes"][1]
    assert sorted(shown["legend"]) == sorted(present)  # the classes the model really finds, by name
    shares = [float(s.rstrip("%")) for s in shown["shares"] if s != "<0.1%"]
    counts = np.bincount(expected.ravel())
    assert max(shares) == pytest.approx(100 * counts.max() / expected.size, abs=0.051)
    assert "model" in shown["timing"] and " ms" in shown["timing"]
    assert "96 × 64 pixels" in shown["status"]
    # at full opacity the canvas shows exactly the class colours of the model's mask, and the photo
    # itself where the model says background (unless the background is tinted too)
    canvas = shown["canvas"]
    assert (canvas["w"], canvas["h"]) == (96, 64)
    pixels = np.asarray(canvas["data"], dtype=np.uint8).reshape(64, 96, 4)[..., :3]
    colours = colorize(expected, META["palette"])
    want = np.where((expected == 0)[..., None], np.asarray(Image.open(image).convert("RGB")), colours)
    np.testing.assert_array_equal(pixels, want)
    tinted = np.asarray(shown["canvas_tinted"]["data"], dtype=np.uint8).reshape(64, 96, 4)[..., :3]
    np.testing.assert_array_equal(tinted, colours)
    assert shown["download_name"] == "street_mask.png"
    np.testing.assert_array_equal(np.asarray(Image.open(shown["download"])), expected)
    assert "not an image" in shown["error"]
    after = shown["after_error"]
    assert after["canvas"] == [0, 0] and not after["filled"], after  # no overlay of the previous image
    assert after["href"] is None and after["disabled"], after  # no download of the previous mask
    assert len(after["legend"]) == 1 and "Segment an image" in after["legend"][0] and after["timing"] == ""
    assert shown["docs_requests"] and all(u.startswith(f"http://127.0.0.1:{port}/") for u in shown["docs_requests"])
    assert shown["docs_problems"] == []
    assert shown["trained"] == "shapes train (400 images)"  # the model card says what it learnt from
    shot = Image.open(tmp_path / "page.png")
    assert shot.width == 1200 and shot.height > 600
