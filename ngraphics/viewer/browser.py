"""A headless Chromium client for the viewer's browser test and benchmark: the system's Chromium and
chromedriver (Debian: `apt-get install chromium chromium-driver`) driven by Selenium, with the driver path set
explicitly so Selenium Manager never downloads anything.

    with headless_chromium() as driver:
        driver.get(viewer.url)
        picture = canvas_picture(driver)          # (H, W, 3) uint8 RGB of the 3D canvas
"""

from __future__ import annotations

import contextlib
import os
import shutil

import numpy as np

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def chromium_paths() -> tuple[str | None, str | None]:
    """(browser, chromedriver) on PATH (or NGRAPHICS_CHROMIUM / NGRAPHICS_CHROMEDRIVER), None where missing."""
    browser = os.environ.get("NGRAPHICS_CHROMIUM") or next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)
    driver = os.environ.get("NGRAPHICS_CHROMEDRIVER") or shutil.which("chromedriver")
    return browser, driver


def missing() -> str | None:
    """Why a headless browser cannot run here (a skip reason), or None when it can."""
    browser, driver = chromium_paths()
    if browser is None or driver is None:
        return ("headless Chromium not installed (Debian: apt-get install chromium chromium-driver; "
                ".ci/run installs them)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium not installed (pip install -e '.[viewer-test]')"
    return None


@contextlib.contextmanager
def headless_chromium(width: int = 900, height: int = 700):
    """A headless Chromium WebDriver with software WebGL (SwiftShader); quits on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = chromium_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}",
                "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist",
                "--force-device-scale-factor=1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def page_picture(driver) -> np.ndarray:
    """The whole page as (H, W, 3) uint8 RGB."""
    import cv2

    png = np.frombuffer(driver.get_screenshot_as_png(), dtype=np.uint8)
    return cv2.imdecode(png, cv2.IMREAD_COLOR)[..., ::-1].copy()


def canvas_picture(driver) -> np.ndarray:
    """The 3D canvas (the largest <canvas> on the page) as (H, W, 3) uint8 RGB, cut from a page screenshot."""
    from selenium.webdriver.common.by import By

    canvases = driver.find_elements(By.TAG_NAME, "canvas")
    if not canvases:
        raise RuntimeError("no <canvas> on the page yet")
    rect = max((c.rect for c in canvases), key=lambda r: r["width"] * r["height"])
    x, y, w, h = (int(round(rect[k])) for k in ("x", "y", "width", "height"))
    return page_picture(driver)[y : y + h, x : x + w]


def element_pictures(driver, css: str) -> list[np.ndarray]:
    """Each element matching the CSS selector, scrolled into view, as (H, W, 3) uint8 RGB cut from a page
    screenshot (e.g. ".uplot canvas": the plots in the GUI panel, which may need scrolling to)."""
    from selenium.webdriver.common.by import By

    pictures = []
    for element in driver.find_elements(By.CSS_SELECTOR, css):
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
        rect = driver.execute_script("const r = arguments[0].getBoundingClientRect();"
                                     "return [r.left, r.top, r.width, r.height];", element)
        x, y, w, h = (int(round(v)) for v in rect)
        pictures.append(page_picture(driver)[max(y, 0) : y + h, max(x, 0) : x + w])
    return pictures


__all__ = ["canvas_picture", "chromium_paths", "element_pictures", "headless_chromium", "missing", "page_picture"]
