"""Headless Chromium checks (marker ``browser``): the HTML report renders
offline without console errors, and notebook 01 runs in JupyterLab with a
live plot that redraws when a slider moves.

Needs ``/usr/bin/chromium`` and ``/usr/bin/chromedriver``
(``scripts/install_browser.sh``); skipped when they are missing.
Screenshots go to ``tests/artifacts/``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
    pytest.skip(f"needs {CHROMIUM} and {CHROMEDRIVER}: run scripts/install_browser.sh",
                allow_module_level=True)


@pytest.fixture
def driver():
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", "--disable-extensions", "--no-first-run"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    drv = webdriver.Chrome(options=opts, service=service)
    drv.set_page_load_timeout(120)
    yield drv
    drv.quit()


def wait_for(drv, condition, timeout, what):
    try:
        return WebDriverWait(drv, timeout, poll_frequency=0.25).until(condition)
    except TimeoutException:
        shot = screenshot(drv, "failure")
        raise AssertionError(f"timed out after {timeout}s waiting for {what} "
                             f"(screenshot {shot})") from None


def screenshot(drv, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    drv.save_screenshot(str(path))
    return path


def severe_errors(drv, ignore=()) -> list[str]:
    logs = drv.get_log("browser")
    return [e["message"] for e in logs if e["level"] == "SEVERE"
            and not any(s in e["message"] for s in ignore)]


# -- the report --------------------------------------------------------------------

def make_report(tmp_path: Path) -> Path:
    """The report on the tiny model, with a synthetic passkey sweep."""
    from mesa_viz import report
    from mesa_viz.models import tiny_model

    passkey = tmp_path / "passkey.jsonl"
    passkey.write_text("\n".join(
        f'{{"method": "{m}", "length": {L}, "depth": {d}, "correct": {str(L < 300 or m == "mesa").lower()}}}'
        for m in ("origin", "mesa") for L in (100, 200, 400) for d in (0.0, 0.5, 1.0)))
    model, tok = tiny_model("llama", max_position_embeddings=64)
    return report.build(tmp_path / "report.html", model=model, tokenizer=tok,
                        results={"passkey": passkey}, length=160, layers=[0, 1],
                        min_correlation=0.5)


def test_report_renders_offline(driver, tmp_path):
    path = make_report(tmp_path)
    driver.get(path.as_uri())
    wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".plotly-graph-div .main-svg"))
             >= 2, 60, "plotly SVGs in the report")
    n_divs = len(driver.find_elements(By.CSS_SELECTOR, ".plotly-graph-div"))
    n_drawn = driver.execute_script(
        "return [...document.querySelectorAll('.plotly-graph-div')]"
        ".filter(d => d.querySelector('.main-svg') && d._fullLayout).length")
    assert n_drawn == n_divs, f"only {n_drawn} of {n_divs} figures were drawn"
    heatmap_pixels = driver.execute_script(
        "return document.querySelectorAll('.plotly-graph-div image, .plotly-graph-div .hm').length")
    assert heatmap_pixels > 0, "no heatmap images were rendered"
    errors = severe_errors(driver)
    assert not errors, f"console errors: {errors}"
    screenshot(driver, "report_top")
    driver.execute_script("window.scrollTo(0, document.body.scrollHeight / 2)")
    screenshot(driver, "report_middle")


# -- JupyterLab --------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyter_lab(tmp_path):
    """A JupyterLab server on 127.0.0.1 (no token) over a copy of notebooks/."""
    root = tmp_path / "notebooks"
    shutil.copytree(ROOT / "notebooks", root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    port = free_port()
    env = dict(os.environ, MESA_VIZ_TEST="1", JUPYTER_CONFIG_DIR=str(tmp_path / "jcfg"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "jrun"))
    settings = tmp_path / "jcfg" / "lab" / "user-settings" / "@jupyterlab"
    (settings / "apputils-extension").mkdir(parents=True)
    (settings / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        '{"fetchNews": "false", "checkForUpdates": false}')
    (settings / "notebook-extension").mkdir(parents=True)    # every cell stays in the DOM
    (settings / "notebook-extension" / "tracker.jupyterlab-settings").write_text(
        '{"windowingMode": "none"}')
    log = (tmp_path / "jupyter.log").open("w")
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}",
           "--ip=127.0.0.1", "--IdentityProvider.token=", "--ServerApp.password=",
           f"--ServerApp.root_dir={root}", "--LabApp.news_url=None"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise AssertionError("JupyterLab did not start: "
                                         + (tmp_path / "jupyter.log").read_text()[-3000:])
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def kernel_idle(drv) -> bool:
    """The notebook's kernel is idle; a "Select Kernel" dialog (JupyterLab asks
    when it cannot pick the kernel by itself) is accepted with its default."""
    drv.execute_script(
        "const b = [...document.querySelectorAll('.jp-Dialog button')]"
        ".find(e => e.textContent.trim() === 'Select'); if (b) b.click();")
    return bool(drv.execute_script(
        "const s = document.querySelector('.jp-Notebook-ExecutionIndicator');"
        "return s && s.getAttribute('data-status') === 'idle'"))


def plot_svgs(drv) -> list[str]:
    """A fingerprint of every rendered plotly plot in the notebook's outputs, in page
    order: its title text plus a hash and the length of its first SVG layer (axes,
    traces, titles).  Hashing in the page keeps the payload small."""
    return drv.execute_script("""
        const hash = s => { let h = 0; for (let i = 0; i < s.length; i++)
                              { h = (h * 31 + s.charCodeAt(i)) | 0; } return h; };
        return [...document.querySelectorAll('.jp-OutputArea-output svg.main-svg')]
          .filter(e => e.parentElement.querySelector('.main-svg') === e).map(e => {
            const t = e.parentElement.querySelector('.gtitle');
            const html = e.outerHTML;
            return (t ? t.textContent : '') + ' #' + hash(html) + ' len ' + html.length; });""")


def widget_slider(drv, label: str):
    """The ipywidgets slider whose description is ``label``."""
    for box in drv.find_elements(By.CSS_SELECTOR, ".widget-slider"):
        desc = box.find_elements(By.CSS_SELECTOR, ".widget-label")
        if desc and desc[0].text.strip() == label:
            return box
    raise AssertionError(f"no slider labelled {label!r}; found "
                         + str([b.text for b in drv.find_elements(By.CSS_SELECTOR, ".widget-slider")]))


def click_menu(drv, menu: str, item: str) -> None:
    """Click ``menu`` in JupyterLab's menu bar, then its entry ``item``."""
    def find(selector, text):
        return [e for e in drv.find_elements(By.CSS_SELECTOR, selector)
                if e.is_displayed() and e.text.strip().startswith(text)]
    top = wait_for(drv, lambda d: find(".lm-MenuBar-item", menu), 30, f"the {menu!r} menu")
    top[0].click()
    entry = wait_for(drv, lambda d: find(".lm-Menu-item .lm-Menu-itemLabel", item), 10,
                     f"the {item!r} entry of the {menu!r} menu")
    entry[0].click()


def run_all_cells(drv) -> None:
    """Run every cell through the Run menu."""
    click_menu(drv, "Run", "Run All Cells")


def test_jupyterlab_notebook01_widgets(driver, jupyter_lab):
    driver.get(f"{jupyter_lab}/lab/tree/01_weave_layouts.ipynb")
    wait_for(driver, EC.presence_of_element_located((By.CSS_SELECTOR, ".jp-Notebook .jp-Cell")),
             90, "the notebook to open")
    wait_for(driver, kernel_idle, 90, "an idle kernel")
    run_all_cells(driver)
    # the explorer: sliders and its three figure widgets
    slider = wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".widget-slider"),
                      120, "the layout explorer's sliders")
    # 5 static figures, then the explorer's 3 figure widgets
    wait_for(driver, lambda d: len(plot_svgs(d)) >= 5 + 3, 120,
             "the static figures and the explorer's 3 figures to render; found "
             + str(driver.execute_script(
                 "return ['.main-svg', '.js-plotly-plot', '.jp-OutputArea-output',"
                 " '.jp-OutputArea-output .main-svg'].map("
                 "s => s + ': ' + document.querySelectorAll(s).length)")))
    wait_for(driver, kernel_idle, 120, "the kernel to finish running all cells")
    explorer_figs = lambda d: plot_svgs(d)[-3:]          # noqa: E731
    slider = widget_slider(driver, "seq_len")
    driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", slider)
    screenshot(driver, "lab_notebook01_before")
    before = explorer_figs(driver)
    old_value = int(slider.find_element(By.CSS_SELECTOR, ".widget-readout").text)
    handle = slider.find_element(By.CSS_SELECTOR, ".noUi-handle")
    handle.click()
    for _ in range(3):
        handle.send_keys(Keys.ARROW_RIGHT)
    wait_for(driver, lambda d: int(slider.find_element(By.CSS_SELECTOR, ".widget-readout").text)
             > old_value, 20, "the seq_len readout to grow after the arrow keys")
    new_value = int(slider.find_element(By.CSS_SELECTOR, ".widget-readout").text)
    wait_for(driver, lambda d: f"n={new_value}," in " ".join(explorer_figs(d)), 60,
             f"the layout heatmap to be redrawn for seq_len {old_value} -> {new_value}")
    wait_for(driver, kernel_idle, 60, "an idle kernel after the redraws")
    after = explorer_figs(driver)
    assert after != before, "the explorer's figures did not change"
    assert f"n={old_value}," not in after[0], "the layout heatmap still shows the old length"
    driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", slider)
    screenshot(driver, "lab_notebook01_after")
    stderr = driver.execute_script(
        "return [...document.querySelectorAll('.jp-RenderedText[data-mime-type="
        "\"application/vnd.jupyter.stderr\"]')].map(e => e.innerText)")
    bad = [e for e in stderr if any(w in e for w in ("Traceback", "Error", "failed"))]
    assert not bad, f"errors in the notebook's stderr: {bad}"
