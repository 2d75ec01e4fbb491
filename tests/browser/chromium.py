"""Headless Chromium (Debian's chromium + chromium-driver, driven by selenium) and a
uvicorn server on a loopback port in a thread: shared by the browser test and the
screenshot script. ``find_chromium`` says why a browser cannot run, so the test
can skip with that reason; ``scripts/install_browser.sh`` installs what it needs.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver", "/usr/lib/chromium/chromedriver", "/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars")


def find_chromium() -> tuple[str | None, str | None, str]:
    """(browser path, driver path, reason when one is missing)."""
    browser = next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)
    driver = next((shutil.which(name) for name in DRIVERS if shutil.which(name)), None)
    try:
        import selenium  # noqa: F401
    except ImportError:
        return browser, driver, "selenium is not installed (run scripts/install_browser.sh)"
    if browser is None:
        return None, driver, "Chromium not found (run scripts/install_browser.sh: apt-get install chromium)"
    if driver is None:
        return browser, None, "chromedriver not found (run scripts/install_browser.sh: apt-get install chromium-driver)"
    return browser, driver, ""


@contextlib.contextmanager
def chromium(width: int = 1280, height: int = 900):
    """A headless Chromium WebDriver with a fresh profile, closed on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path, reason = find_chromium()
    if reason:
        raise RuntimeError(reason)
    with tempfile.TemporaryDirectory(prefix="unclip-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for flag in FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={profile}")
        options.add_argument(f"--window-size={width},{height}")
        driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
        try:
            yield driver
        finally:
            driver.quit()


@contextlib.contextmanager
def serve_in_thread(app):
    """Run ``app`` with uvicorn on 127.0.0.1 at a free port; yields the base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def write_png(path: Path, colour: tuple[int, int, int], size: int = 32) -> Path:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(image).ellipse((4, 4, size - 5, size - 5), fill=colour)
    image.save(path)
    return path
