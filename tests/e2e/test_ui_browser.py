"""Headless Chromium drives the Gradio app, which talks over HTTP to the API on 127.0.0.1."""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn
from netutil import free_port
from serving_fixtures import SCENES, build_index

from omniret.index.store import IndexStore
from omniret.models.embedder import Embedder
from omniret.models.reranker import Reranker
from omniret.serving.backend import LocalBackend
from omniret.serving.client import OmniretClient
from omniret.serving.routes import create_api

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (./run test installs it)")



def _load_ui():
    """ui/app.py itself, loaded by path as `python ui/app.py` would run it."""
    spec = importlib.util.spec_from_file_location("omniret_ui_app", ROOT / "ui" / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ui_root(tmp_path_factory):
    return tmp_path_factory.mktemp("ui")


@pytest.fixture(scope="module")
def ui_media(ui_root):
    return ui_root / "media"


@pytest.fixture(scope="module")
def api_url(ui_root, make_config, backbones):
    root = ui_root
    cfg = make_config("qwen2_vl", f"index.uri={root / 'db'}", "embed.progress=false", "index.read_consistency_s=0")
    embedder = Embedder(backbones["qwen2_vl"], cfg.media, cfg.embed, cfg.model.template)
    build_index(cfg, embedder, root / "media")
    app = create_api(LocalBackend(embedder, Reranker(backbones["qwen2_vl"])), cfg, IndexStore(cfg.index))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            httpx.get(f"{url}/healthz", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    yield url
    server.should_exit = True
    thread.join(timeout=10)


@contextlib.contextmanager
def browser_page(api_url: str):
    """The Gradio app (ui/app.py) on a free port, opened in headless Chromium."""
    from playwright.sync_api import sync_playwright

    port = free_port()
    demo = _load_ui().build_demo(OmniretClient(api_url))
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/", wait_until="networkidle")
            yield page
            browser.close()
    finally:
        demo.close()


def test_search_from_the_browser_shows_a_gallery(api_url):
    with browser_page(api_url) as page:
        page.locator("#query-text textarea").fill("a red circle")
        page.locator("#search-button").click()
        page.wait_for_function("document.querySelectorAll('#results img').length >= 4", timeout=60_000)
        status = page.locator("#search-status").inner_text()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "ui_search.png"), full_page=True)
        images = page.locator("#results img").count()
    assert images >= 4
    assert "results" in status and "vector" in status


def test_image_search_in_the_browser_puts_that_picture_first(api_url, ui_media):
    """Upload an indexed picture as the query: the same picture (cosine 1) must be the first result."""
    with browser_page(api_url) as page:
        page.locator("input[type=file]").first.set_input_files(str(ui_media / "green_triangle.png"))
        page.wait_for_function("[...document.querySelectorAll('img')].some(i => i.src.includes('green_triangle'))",
                               timeout=60_000)  # the upload finished: the component shows the picture
        page.locator("#search-button").click()
        page.wait_for_function("document.querySelector('#search-status').innerText.includes('results')",
                               timeout=60_000)
        page.wait_for_function("document.querySelectorAll('#results img').length >= 4", timeout=60_000)
        captions = page.locator("#results").inner_text()
    names = [line.split(" | ")[0] for line in captions.splitlines() if " | score " in line]
    assert names[0] == "green_triangle.png" and "score 1.000" in captions.splitlines()[
        [line.split(" | ")[0] for line in captions.splitlines()].index("green_triangle.png")]
    assert sorted(names) == sorted({f"{c}_{s}.png" for s, c in SCENES})


def test_errors_from_the_api_are_shown_in_the_page(api_url):
    with browser_page(api_url) as page:
        page.locator("#query-text textarea").fill("x" * 30_000)  # over serve.max_text_chars
        page.locator("#search-button").click()
        page.wait_for_function("document.querySelector('#search-status').innerText.includes('Error')",
                               timeout=60_000)
        text = page.locator("#search-status").inner_text()
    assert "text" in text and "20000" in text
