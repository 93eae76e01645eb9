"""The headless Chromium both browser test files drive (one a module).

Needs ``/usr/bin/chromium`` and ``/usr/bin/chromedriver`` (``CHROMIUM``,
``CHROMEDRIVER`` to point elsewhere; ``scripts/install_browser.sh`` installs
them); every test that asks for ``driver`` is skipped, saying so, where they
are missing.  A test module may set ``CHROME_ARGS`` for more switches.
"""

from __future__ import annotations

import os

import pytest

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
#: The browser window, in CSS pixels.
WINDOW = (1400, 1000)


@pytest.fixture(scope="module")
def driver(request):
    """A headless Chromium of :data:`WINDOW`, its console log kept."""
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.skip(f"needs {CHROMIUM} and {CHROMEDRIVER}: run scripts/install_browser.sh")
    webdriver = pytest.importorskip("selenium.webdriver")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={WINDOW[0]},{WINDOW[1]}", "--disable-extensions",
                "--no-first-run", *getattr(request.module, "CHROME_ARGS", ())):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(options=opts,
                           service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    drv.set_page_load_timeout(120)
    yield drv
    drv.quit()
