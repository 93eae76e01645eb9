"""Headless Chromium checks (marker ``browser``) of what a user sees: the HTML
report, and the notebooks run in JupyterLab (one server and one browser for
the module; notebooks in test mode, ``MESA_VIZ_TEST=1``, except where said).

Guards (docs/testing.md, "Bugs the tests guard"):

* each notebook's first screen (no scrolling, at this window size) shows its
  main picture: :func:`test_notebook_first_screen`;
* each model notebook makes its point at its real size on the default model,
  Run All timed (02: the needle farther than ``T``, Origin's share near zero,
  Mesa's high): :func:`test_model_notebook_at_real_size_first_screen`;
* after a widget change the rendered figure carries only the new figure's
  shapes, annotations, title and axis range (the front end used to keep the
  old ones): :func:`test_layout_explorer_draws_only_the_new_figure`;
* the layout explorer draws Mesa's choice parameters (``stair="anchored"``,
  ``preset="authors-code"``): :func:`test_layout_explorer_draws_mesa_stair_and_preset`;
* the ``T`` marker of a widget-drawn log axis sits on the ``T`` tick's
  position: :func:`test_attention_explorer_T_marker_on_the_axis`;
* a widget that runs the model shows that it is working and shows errors
  raised in its callback in the widget itself:
  :func:`test_model_widget_shows_busy_and_errors`.

Needs ``/usr/bin/chromium`` and ``/usr/bin/chromedriver``
(``scripts/install_browser.sh``); skipped when they are missing.
Screenshots go to ``tests/artifacts/``; with ``MESA_VIZ_SCREENSHOTS=DIR``
(``make screenshots``) the first-screen and report screenshots are also
copied to ``DIR``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


from repo import ROOT  # noqa: E402
ARTIFACTS = ROOT / "tests" / "artifacts"
#: The notebooks run in test mode (a tiny random model) unless MESA_VIZ_TEST=0: then at
#: their real size (the default model; minutes to hours: set MESA_VIZ_BROWSER_TIMEOUT).
TEST_MODE = "0" if os.environ.get("MESA_VIZ_TEST") == "0" else "1"
RUN_TIMEOUT = int(os.environ.get("MESA_VIZ_BROWSER_TIMEOUT", 420))
#: Scrollbars hidden: a first screen is the window, whatever the page's length.
CHROME_ARGS = ("--hide-scrollbars",)

pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import (  # noqa: E402
    ElementClickInterceptedException, StaleElementReferenceException, TimeoutException)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402


def wait_for(drv, condition, timeout, what):
    try:
        return WebDriverWait(drv, timeout, poll_frequency=0.25).until(condition)
    except TimeoutException:
        shot = screenshot(drv, "failure")
        raise AssertionError(f"timed out after {timeout}s waiting for {what} "
                             f"(screenshot {shot})") from None


def screenshot(drv, name: str, publish: bool = False) -> Path:
    """Save a screenshot to tests/artifacts (and, with ``publish``, to
    ``$MESA_VIZ_SCREENSHOTS`` when set)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    drv.save_screenshot(str(path))
    target = os.environ.get("MESA_VIZ_SCREENSHOTS")
    if publish and target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)
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
    wait_for(driver, lambda d: d.execute_script(
        "return [...document.querySelectorAll('.plotly-graph-div')]"
        ".filter(d => d.querySelector('.main-svg') && d._fullLayout).length") == n_divs,
        60, f"all {n_divs} figures of the report to be drawn")
    heatmap_pixels = driver.execute_script(
        "return document.querySelectorAll('.plotly-graph-div image, .plotly-graph-div .hm').length")
    assert heatmap_pixels > 0, "no heatmap images were rendered"
    errors = severe_errors(driver)
    assert not errors, f"console errors: {errors}"
    text = driver.find_element(By.TAG_NAME, "body").text
    assert "Figure 1" in text and "Not included: no bench results" in text
    assert "Not included: the drill-down of a failed passkey sample" in text   # rows without seed
    screenshot(driver, "report", publish=True)
    driver.execute_script("window.scrollTo(0, document.body.scrollHeight / 2)")
    screenshot(driver, "report_middle")


# -- JupyterLab --------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lab_settings(config: Path) -> None:
    """No news or update checks; every cell stays in the DOM."""
    settings = config / "lab" / "user-settings" / "@jupyterlab"
    (settings / "apputils-extension").mkdir(parents=True)
    (settings / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        '{"fetchNews": "false", "checkForUpdates": false}')
    (settings / "notebook-extension").mkdir(parents=True)
    (settings / "notebook-extension" / "tracker.jupyterlab-settings").write_text(
        '{"windowingMode": "none"}')


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on 127.0.0.1 (no token) over a copy of notebooks/ plus
    the test's own notebooks; kernels run in test mode (``MESA_VIZ_TEST=1``)
    unless the tests run with ``MESA_VIZ_TEST=0``."""
    with jupyterlab(tmp_path_factory.mktemp("lab"), MESA_VIZ_TEST=TEST_MODE) as server:
        yield server


@pytest.fixture(scope="module")
def real_lab(tmp_path_factory):
    """A second JupyterLab server whose kernels run the notebooks at their real
    size on the default model (``MESA_VIZ_TEST=0``); notebook 05 clicks through
    the committed passkey rows (its default in the repository)."""
    rows = ROOT / "benchmarks" / "passkey-past-T" / "passkey.jsonl"
    with jupyterlab(tmp_path_factory.mktemp("real_lab"), MESA_VIZ_TEST="0",
                    MESA_VIZ_PASSKEY=str(rows)) as server:
        yield server


@contextlib.contextmanager
def jupyterlab(tmp: Path, **kernel_env):
    """The server of :func:`lab` in ``tmp``, its kernels given ``kernel_env``."""
    root = tmp / "notebooks"
    shutil.copytree(ROOT / "notebooks", root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    port = free_port()
    env = dict(os.environ, MESA_VIZ_OUT=str(tmp / "out"),
               JUPYTER_CONFIG_DIR=str(tmp / "jcfg"), JUPYTER_RUNTIME_DIR=str(tmp / "jrun"),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               **kernel_env)
    lab_settings(tmp / "jcfg")
    log = (tmp / "jupyter.log").open("w")
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}",
           "--ip=127.0.0.1", "--IdentityProvider.token=", "--ServerApp.password=",
           f"--ServerApp.root_dir={root}", "--LabApp.news_url=None",
           "--ServerApp.disable_check_xsrf=True"]
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
                                         + (tmp / "jupyter.log").read_text()[-3000:])
                time.sleep(0.5)
        yield {"url": url, "root": root}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def shutdown_kernels(url: str) -> None:
    """End every session's kernel (one notebook's kernel runs at a time)."""
    with urllib.request.urlopen(f"{url}/api/sessions", timeout=10) as r:
        sessions = json.load(r)
    for s in sessions:
        req = urllib.request.Request(f"{url}/api/sessions/{s['id']}", method="DELETE")
        urllib.request.urlopen(req, timeout=30).close()


def kernel_idle(drv) -> bool:
    """The notebook's kernel is idle; a "Select Kernel" dialog (JupyterLab asks
    when it cannot pick the kernel by itself) is accepted with its default."""
    drv.execute_script(
        "const b = [...document.querySelectorAll('.jp-Dialog button')]"
        ".find(e => e.textContent.trim() === 'Select'); if (b) b.click();")
    return bool(drv.execute_script(
        "const s = document.querySelector('.jp-Notebook-ExecutionIndicator');"
        "return s && s.getAttribute('data-status') === 'idle'"))


DIALOGS = """
return [...document.querySelectorAll('.jp-Dialog')].map(d => {
  const text = d.innerText;
  const b = d.querySelector('.jp-Dialog-footer .jp-mod-accept') || d.querySelector('button');
  if (b) b.click();
  return text; });
"""


def dismiss_dialogs(drv) -> list[str]:
    """Accept any JupyterLab dialog (e.g. "Select Kernel"); returns their texts."""
    texts = drv.execute_script(DIALOGS)
    if texts:
        time.sleep(0.5)
    return texts


def click_menu(drv, menu: str, item: str) -> None:
    """Click ``menu`` in JupyterLab's menu bar, then its entry ``item`` (a dialog
    that opens meanwhile, e.g. "Select Kernel", is accepted first)."""
    def find(selector, text):
        return [e for e in drv.find_elements(By.CSS_SELECTOR, selector)
                if e.is_displayed() and e.text.strip().startswith(text)]

    dismissed = []
    for attempt in range(5):
        dismissed += dismiss_dialogs(drv)
        assert not any("rror" in t.split("\n")[0] for t in dismissed), \
            f"JupyterLab error dialog: {dismissed}"
        try:
            top = wait_for(drv, lambda d: find(".lm-MenuBar-item", menu), 30, f"the {menu!r} menu")
            top[0].click()
            entry = wait_for(drv, lambda d: find(".lm-Menu-item .lm-Menu-itemLabel", item), 10,
                             f"the {item!r} entry of the {menu!r} menu")
            entry[0].click()
            return
        except ElementClickInterceptedException:
            time.sleep(1)
    raise AssertionError(f"could not click {menu} > {item}; dialogs: {dismissed}")


ALL_RUN = """
const p = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')]
  .map(e => e.textContent.trim()).filter(t => t);      // a collapsed input shows no prompt
return p.length > 0 && p.every(t => /\\[\\d+\\]/.test(t));
"""

#: Every plotly figure in the notebook's outputs (static ones are the output div itself).
PLOTS = ".jp-OutputArea-output.js-plotly-plot, .jp-OutputArea-output .js-plotly-plot"

STARTED = """
return [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')]
  .some(e => /\\[(\\*|\\d+)\\]/.test(e.textContent));
"""

CELL_ERRORS = """
return [...document.querySelectorAll('.jp-OutputArea-output[data-mime-type='
  + '"application/vnd.jupyter.stderr"], .jp-RenderedText[data-mime-type='
  + '"application/vnd.jupyter.error"]')].map(e => e.innerText)
  .filter(t => /Traceback|Error/.test(t));
"""


FIRST_DRAWN = f"""
return [...document.querySelectorAll('{PLOTS}')]
  .some(g => g._fullLayout && g.querySelector('.main-svg'));
"""


def run_notebook(drv, lab: dict, name: str, timeout: int = RUN_TIMEOUT,
                 times: dict | None = None) -> None:
    """Open ``name`` in a fresh workspace, run every cell, wait until all ran
    and the figures are drawn; fail on any error output.  The notebook run
    last in ``lab`` is reused as it is (``lab["shown"]``: its name and page) while the browser
    still shows it (the browser is shared: another server's notebook or a
    report may have been opened since).  ``times`` receives the
    seconds from Run All to the first figure drawn (``first_picture_s``) and
    to the last cell run (``run_all_s``)."""
    if lab.get("shown") == (name, drv.current_url):
        return
    lab["shown"] = None
    shutdown_kernels(lab["url"])
    drv.get(f"{lab['url']}/lab/tree/{name}?reset")
    wait_for(drv, lambda d: d.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell"),
             90, f"{name} to open")
    wait_for(drv, kernel_idle, 120, f"an idle kernel for {name}")
    times = {} if times is None else times
    for attempt in range(3):      # a click while the kernel (re)connects can be lost
        start = time.time()
        click_menu(drv, "Run", "Run All Cells")
        try:
            WebDriverWait(drv, 30, poll_frequency=0.25).until(
                lambda d: d.execute_script(STARTED))
            break
        except TimeoutException:
            continue
    def all_run(d) -> bool:
        if "first_picture_s" not in times and d.execute_script(FIRST_DRAWN):
            times["first_picture_s"] = round(time.time() - start, 1)
        return d.execute_script(ALL_RUN) and kernel_idle(d)

    wait_for(drv, all_run, timeout, f"every cell of {name} to run")
    times["run_all_s"] = round(time.time() - start, 1)
    wait_for(drv, lambda d: d.execute_script(
        f"return [...document.querySelectorAll('{PLOTS}')]"
        ".every(g => g._fullLayout && g.querySelector('.main-svg'))"), 60,
        f"the figures of {name} to be drawn")
    errors = drv.execute_script(CELL_ERRORS)
    assert not errors, f"errors in {name}: {errors}"
    lab["shown"] = (name, drv.current_url)


def scroll_to_top(drv) -> None:
    drv.execute_script(
        "document.querySelectorAll('.jp-WindowedPanel-outer, .jp-Notebook')"
        ".forEach(e => { e.scrollTop = 0; });")
    time.sleep(0.5)


# -- each notebook's first screen --------------------------------------------------------

FIRST_SCREEN = """
const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-WindowedPanel-outer')
  || document.querySelector('.jp-Notebook');
const view = panel.getBoundingClientRect();
const gd = [...document.querySelectorAll(arguments[0])][0];
if (!gd) return null;
const r = gd.querySelector('.main-svg').getBoundingClientRect();
const t = gd.querySelector('.gtitle');
return {view_top: view.top, view_bottom: Math.min(view.bottom, window.innerHeight),
        top: r.top, bottom: r.bottom, scroll: panel.scrollTop,
        title: t ? t.textContent : '',
        annotations: [...gd.querySelectorAll('.infolayer g.annotation')].map(a => a.textContent),
        texts: (gd.querySelector('.infolayer') || {textContent: ''}).textContent,
        drawn: gd.querySelectorAll('.hm, image, .scatterlayer .trace, .barlayer .trace').length};
"""

#: notebook -> what its main figure's title starts with, the labels it must carry, and
#: whether it must fit the first screen (06, the theorems notebook, is only screenshot).
MAIN_FIGURES = {
    "02_attention_beyond_training_length": ("mesa: layer", ["needle", "distance ≥ T="], True),
    "03_hidden_state_thresholds": ("hidden state, layer", ["T=", "threshold"], True),
    "04_passkey_memory_latency": ("passkey retrieval accuracy", ["origin", "mesa", "T="], True),
    "06_theorems": ("layer 2 corrected", ["H", "M"], False),
    "01_weave_layouts": ("Figure 1: Mesa", ["first", "middle", "last", "mesa: n=13, T=8",
                                            "stair: n=10, T=8"], True),
}

T_MARKS = """
const [gd, name] = arguments, fl = gd._fullLayout, box = gd.getBoundingClientRect();
return fl.shapes.map((s, i) => [s, i]).filter(([s]) => s.name === name).map(([s, i]) => {
  const ax = fl['xaxis' + s.xref.slice(1)];
  const r = gd.querySelector(`.shapelayer path[data-index="${i}"]`).getBoundingClientRect();
  return {x0: s.x0, type: ax.type, drawn: (r.left + r.right) / 2 - box.left,
          axis: ax._offset + ax.l2p(ax.type === 'log' ? Math.log10(s.x0) : s.x0)};
});
"""


def check_T_marks(drv, shot, tiny: bool = TEST_MODE == "1") -> None:
    """The explorer of notebook 02: the attention heatmap's line at ``k = q - T``
    (linear axis) and the distance plot's ``T`` (log axis) are drawn where
    their axis puts those values."""
    attention, distance = drv.find_elements(By.CSS_SELECTOR, PLOTS)[:2]
    (row,) = drv.execute_script(T_MARKS, attention, "train_length")
    (line,) = drv.execute_script(T_MARKS, distance, "train_length")
    assert row["type"] == "linear" and line["type"] == "log", (row, line, shot)
    if tiny:                                       # 200 tokens, T = 64, the last query
        assert row["x0"] == 199 - 64 + 0.5 and abs(line["x0"] - 64) < 1e-6, (row, line, shot)
    for mark in (row, line):
        assert abs(mark["drawn"] - mark["axis"]) < 1.5, (mark, shot)


@pytest.mark.parametrize("name", list(MAIN_FIGURES))
def test_notebook_first_screen(driver, lab, name):
    """Run the notebook (02-04 and 06 in test mode, on the tiny model, unless
    ``MESA_VIZ_TEST=0``), scroll to the top: its main figure is drawn entirely
    on the first screen, with its marks; screenshot ``<nn>_first_screen.png``
    (published for ``make screenshots`` where no model runs, or at real size:
    the model notebooks' published first screens come from
    :func:`test_model_notebook_at_real_size_first_screen`)."""
    run_notebook(driver, lab, f"{name}.ipynb")
    scroll_to_top(driver)
    title, labels, fits = MAIN_FIGURES[name]
    g = driver.execute_script(FIRST_SCREEN, PLOTS)
    publish = TEST_MODE == "0" or name not in REAL_SIZE
    shot = screenshot(driver, f"{name[:2]}_first_screen", publish=publish)
    check_first_screen(g, name, title, labels, fits, shot)
    if name.startswith("02"):
        check_T_marks(driver, shot)


def check_first_screen(g: dict | None, name: str, title: str, labels: list, fits: bool,
                       shot: Path) -> None:
    """The main figure ``g`` (:data:`FIRST_SCREEN`'s answer): drawn, titled
    ``title...``, carrying ``labels``, inside the first screen when ``fits``."""
    assert g is not None, f"{name}: no figure ({shot})"
    assert g["scroll"] == 0 and g["title"].startswith(title), (g, shot)
    if fits:
        assert g["top"] >= g["view_top"] - 1 and g["bottom"] <= g["view_bottom"] + 1, \
            f"{name}: the main figure spans {g['top']:.0f}-{g['bottom']:.0f}px, the first " \
            f"screen {g['view_top']:.0f}-{g['view_bottom']:.0f}px ({shot})"
    for label in labels:                 # an annotation, or the title's or subtitle's text
        assert any(label in a for a in g["annotations"]) or label in g["texts"], \
            (label, g["annotations"], g["texts"], shot)
    assert g["drawn"] > 0, f"{name}: no trace drawn ({shot})"


# -- the model notebooks at their real size, on the default model --------------------------

#: notebook -> its main figure's title start and labels, at the notebook's own default size
#: (SmolLM2-135M-Instruct, T = 8192), and how many code cells ``make test`` runs (None: all,
#: Run All; 2: the setup and the first picture, what a reader sees first). Each runs once;
#: its times go to :data:`TIMES`.
REAL_SIZE = {
    "02_attention_beyond_training_length": ("mesa: layer", ["needle", "distance ≥ T="], None),
    "03_hidden_state_thresholds": ("hidden state, layer", ["T=", "threshold"], 2),
    "04_passkey_memory_latency": ("passkey retrieval accuracy", ["origin", "mesa", "T="], 2),
    "05_why_it_fails": ("passkey retrieval accuracy", ["origin", "mesa", "T="], None),
}
REAL_TIMEOUT = int(os.environ.get("MESA_VIZ_BROWSER_REAL_TIMEOUT", 1800))
#: One JSON line per real-size run: the notebook, seconds to its first figure and to the end
#: of Run All, the machine's CPUs and load.
TIMES = ARTIFACTS / "notebook_times.jsonl"

OUTPUT_TEXT = """
return [...document.querySelectorAll('.jp-OutputArea-output')].map(e => e.innerText).join('\\n');
"""
#: Notebook 02's headline above its explorer (the notebook's setup cell writes it).
HEADLINE = re.compile(
    r"needle tokens \[(\d+), (\d+)\): (\d+) to \d+ tokens before the last query "
    r"\((farther than|INSIDE) T = (\d+)\)\. Needle share of the last query "
    r"on layer (\d+), head (\d+) .*?: mesa ([\d.]+)%, origin ([\d.]+)%")


def percentages_over_100(text: str) -> list[str]:
    """Percentages above 100 % in ``text`` not labelled as a sum."""
    return [text[max(0, m.start() - 60):m.end()] for m in re.finditer(r"(\d+(?:\.\d+)?) ?%", text)
            if float(m.group(1)) > 100 and "sum" not in text[max(0, m.start() - 60):m.end() + 20]]


#: The real-size runs take about 15 minutes on 2 cores (part of ``make test``, the browser
#: layer: 02 and 05 whole, 03 and 04 to their first picture); ``MESA_VIZ_REAL_NOTEBOOKS=all``
#: runs all four whole (about 25 minutes), ``=0`` leaves them out of a local run (skipped).
REAL_NOTEBOOKS = os.environ.get("MESA_VIZ_REAL_NOTEBOOKS", "1")
if REAL_NOTEBOOKS not in ("0", "1", "all"):
    raise ValueError(f"MESA_VIZ_REAL_NOTEBOOKS={REAL_NOTEBOOKS!r}: allowed 0, 1, all")


def first_cells(root: Path, name: str, code_cells: int) -> None:
    """Cut ``root/name.ipynb`` after its first ``code_cells`` code cells (and the
    text between them): the notebook as far as its first picture."""
    import nbformat

    nb = nbformat.read(root / f"{name}.ipynb", as_version=4)
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    assert len(code) > code_cells, (name, len(code), code_cells)
    nb.cells = nb.cells[:code[code_cells]]
    nbformat.write(nb, str(root / f"{name}.ipynb"))


@pytest.mark.skipif(REAL_NOTEBOOKS == "0", reason="MESA_VIZ_REAL_NOTEBOOKS=0: the real-size "
                                                    "notebook runs left out of this run")
@pytest.mark.parametrize("name", list(REAL_SIZE))
def test_model_notebook_at_real_size_first_screen(driver, real_lab, name):
    """Run All on the default model at the notebook's default size in
    JupyterLab (03 and 04 cut after their first picture, :data:`REAL_SIZE`,
    unless ``MESA_VIZ_REAL_NOTEBOOKS=all``): no error, its main figure on the
    first screen (screenshot ``<nn>_first_screen.png``, published by ``make
    screenshots`` once the checks pass), no percentage above 100 % unless
    labelled a sum; the seconds to the first
    figure and to the end of Run All appended to :data:`TIMES`.  Notebook 02:
    the headline says the needle lies farther than ``T`` from the last query,
    Origin's share of it near zero and Mesa's high, and the explorer below
    (drawn after every later cell ran) still shows Mesa on that head with
    that share."""
    title, labels, code_cells = REAL_SIZE[name]
    if REAL_NOTEBOOKS == "all":
        code_cells = None
    if code_cells is not None:
        first_cells(real_lab["root"], name, code_cells)
    times = {"notebook": name, "code_cells": code_cells or "all"}
    run_notebook(driver, real_lab, f"{name}.ipynb", timeout=REAL_TIMEOUT, times=times)
    times.update(cpus=os.cpu_count(), load_1min=round(os.getloadavg()[0], 1))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with TIMES.open("a") as f:
        f.write(json.dumps(times) + "\n")
    print(json.dumps(times))
    scroll_to_top(driver)
    g = driver.execute_script(FIRST_SCREEN, PLOTS)
    shot = screenshot(driver, f"{name[:2]}_first_screen")
    check_first_screen(g, name, title, labels, True, shot)
    text = driver.execute_script(OUTPUT_TEXT)
    assert not percentages_over_100(text), (percentages_over_100(text), shot)
    if name.startswith("02"):
        check_needle_headline(text, g["title"], shot)
        check_T_marks(driver, shot, tiny=False)
    scroll_to_top(driver)
    screenshot(driver, f"{name[:2]}_first_screen", publish=True)     # only a screen that passed


def check_needle_headline(text: str, title: str, shot: Path) -> None:
    """Notebook 02 at real size: the needle farther than ``T`` from the last
    query, Origin's share on Mesa's best head under 5 %, Mesa's over 30 %; the
    explorer shows that head under Mesa and the same share."""
    m = HEADLINE.search(text)
    assert m, f"no needle headline in the output ({shot}): {text[:1500]}"
    far, where, T = int(m[3]), m[4], int(m[5])
    layer, head, mesa, origin = int(m[6]), int(m[7]), float(m[8]), float(m[9])
    assert where == "farther than" and far > T, (m[0], shot)
    assert origin < 5 and mesa > 30, (m[0], shot)
    assert title.startswith(f"mesa: layer {layer}, head {head} "), (title, m[0], shot)
    shown = re.search(r"needle share.*?mesa, layer (\d+), head (\d+): .*?q=\d+: ([\d.]+)%\s*$",
                      text, re.M)
    assert shown and (int(shown[1]), int(shown[2])) == (layer, head), (shown and shown[0], shot)
    assert abs(float(shown[3]) - mesa) < 0.1, (shown[0], m[0], shot)


# -- notebook 01: after a change the browser draws only the new figure -------------------

FIGURES = """
return [...arguments[0].querySelectorAll('.js-plotly-plot')].map(gd => {
  const fl = gd._fullLayout || {};
  const t = gd.querySelector('.gtitle');
  return {title: t ? t.textContent : '',
          shapes: gd.querySelectorAll('.shapelayer path').length,
          annotations: gd.querySelectorAll('.infolayer g.annotation').length,
          x_range: fl.xaxis && fl.xaxis.range, y_range: fl.yaxis && fl.yaxis.range,
          x_ticks: gd.querySelectorAll('.xtick').length};
});
"""


def control(drv, kind: str, label: str, within=None, timeout: int = 60):
    """The ipywidgets control of ``kind`` (``slider``, ``dropdown``) labelled
    ``label``, waiting up to ``timeout`` s for it to be drawn (a widget view is
    rendered after its cell has run: on a loaded machine, seconds later)."""
    def found(_):
        try:
            for box in (within or drv).find_elements(By.CSS_SELECTOR, f".widget-{kind}"):
                desc = box.find_elements(By.CSS_SELECTOR, ".widget-label")
                if desc and desc[0].get_attribute("textContent").strip() == label:
                    return box
        except StaleElementReferenceException:     # redrawn while read: look again
            pass
        return False

    return wait_for(drv, found, timeout, f"a {kind} labelled {label!r}")


def explorer_of(drv, dropdown_label: str):
    """The output area of the cell showing the explorer whose dropdown is
    ``dropdown_label`` (its controls, lines and figures)."""
    dd = control(drv, "dropdown", dropdown_label)
    return drv.execute_script("return arguments[0].closest('.jp-Cell-outputArea')", dd)


def choose(drv, area, label: str, value: str) -> None:
    Select(control(drv, "dropdown", label, area).find_element(By.TAG_NAME, "select")
           ).select_by_visible_text(value)


def slider_value(box) -> int:
    return int(box.find_element(By.CSS_SELECTOR, ".widget-readout").text)


def nudge(drv, box, steps: int) -> int:
    """Move an IntSlider by ``steps`` with the arrow keys; returns the new value."""
    old = slider_value(box)
    handle = box.find_element(By.CSS_SELECTOR, ".noUi-handle")
    handle.click()
    for _ in range(abs(steps)):
        handle.send_keys(Keys.ARROW_RIGHT if steps > 0 else Keys.ARROW_LEFT)
    wait_for(drv, lambda d: slider_value(box) != old, 20, "the slider to move")
    return slider_value(box)


PARAMS_SET = """
return [...arguments[0].querySelectorAll('.widget-slider')].map(box => {
  const auto = box.parentElement.querySelector('.widget-checkbox input');
  return [box.querySelector('.widget-label').textContent.trim(),
          box.querySelector('.widget-readout').textContent.trim(), auto ? auto.checked : null];
}).filter(([name, value, auto]) => auto === false);
"""


def expected_layouts(drv, area, method: str, n: int, T: int) -> list:
    """What the explorer should draw for ``method``, from the parameters its
    controls set by hand (their auto box unchecked): the layout heatmap, the
    title of the difference view, the chunk plan figure (None: a note)."""
    import dataclasses

    import mesa_viz as mv
    from mesa_viz import plots

    fields = {f.name: f for f in dataclasses.fields(mv.METHODS[method])}
    params = {name: (float(v) if name == "leak" else int(v))
              for name, v, _ in drv.execute_script(PARAMS_SET, area) if name in fields}
    lay = mv.layout(method, n, train_length=T, **params)
    plan = lay.chunk_plan is not None and len(lay.chunk_plan.chunks) > 1
    return [plots.layout_heatmap(lay), f"{method} - origin",
            plots.chunk_plan_figure(lay) if plan else None]


def drawn_as(fig) -> tuple:
    return fig.layout.title.text or "", len(fig.layout.shapes), len(fig.layout.annotations)


def check_layout_figures(drv, area, method: str, n: int, T: int) -> None:
    """The three figures in the browser are exactly the new ones: title, number
    of shapes and annotations, axis ranges of the new length."""
    heat, diff_title, plan = expected_layouts(drv, area, method, n, T)

    def drawn(d):
        got = d.execute_script(FIGURES, area)
        return (len(got) == 3 and (got[0]["title"], got[0]["shapes"], got[0]["annotations"])
                == drawn_as(heat) and got[1]["title"].startswith(diff_title)
                and (plan is None or (got[2]["title"], got[2]["shapes"], got[2]["annotations"])
                     == drawn_as(plan)))
    try:
        wait_for(drv, drawn, 60, f"the {method} layout (n={n}, T={T}) alone")
    except AssertionError as err:
        raise AssertionError(f"{err}\nwanted {drawn_as(heat)}, {diff_title!r}, "
                             f"{plan and drawn_as(plan)}\ndrawn "
                             f"{drv.execute_script(FIGURES, area)}") from None
    got = drv.execute_script(FIGURES, area)
    for key in ("x_range", "y_range"):
        lo, hi = sorted(got[0][key])
        assert abs(lo + 0.5) < 0.6 and abs(hi - (n - 0.5)) < 0.6, \
            f"{method}: layout heatmap {key} {got[0][key]} for n={n}"
    if plan is None:        # a one-line note: no bars, no axes, no old title
        assert (got[2]["title"], got[2]["shapes"], got[2]["annotations"]) == ("", 0, 1), got[2]
    else:
        assert got[2]["x_ticks"] > 0, got[2]


def test_layout_explorer_draws_only_the_new_figure(driver, lab):
    """Notebook 01's explorer, mesa -> rerope -> longer -> mesa: each time the
    browser draws the new figures only (the old code kept Mesa's chunk
    lines, chunk labels and the chunk plan's title on ReRoPE's figures)."""
    run_notebook(driver, lab, "01_weave_layouts.ipynb")
    area = explorer_of(driver, "minus")
    seq_len = control(driver, "slider", "seq_len", area)
    T = slider_value(control(driver, "slider", "train_length", area))
    n = slider_value(seq_len)
    check_layout_figures(driver, area, "mesa", n, T)
    choose(driver, area, "method", "rerope")
    check_layout_figures(driver, area, "rerope", n, T)
    driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", area)
    screenshot(driver, "lab_notebook01_explorer_rerope")
    longer = nudge(driver, seq_len, 5)
    check_layout_figures(driver, area, "rerope", longer, T)
    choose(driver, area, "method", "mesa")
    check_layout_figures(driver, area, "mesa", longer, T)
    driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", area)
    screenshot(driver, "lab_notebook01_explorer_mesa")


# -- the layout explorer draws Mesa's choice parameters -----------------------------------

CHOICE_VIEWS = {
    "anchored": ("layout_explorer(method='mesa', params={'stair': 'anchored'})",
                 dict(stair="anchored")),
    "authors_code": ("layout_explorer(seq_len=1400, train_length=1024, "
                     "params={'preset': 'authors-code'})", dict(preset="authors-code")),
}

#: Scroll the explorer's first figure to the top, its summary line (the parameters) above it.
SHOW_FIGURE = """
const plot = arguments[0].querySelector('.js-plotly-plot');
plot.scrollIntoView({block: 'start'});
const panel = plot.closest('.jp-WindowedPanel-outer') || plot.closest('.jp-Notebook');
if (panel) panel.scrollTop -= 110;
"""

DROPDOWNS = """
return [...arguments[0].querySelectorAll('.widget-dropdown')].map(box => [
  box.querySelector('.widget-label').textContent.trim(), box.querySelector('select').value]);
"""


def test_layout_explorer_draws_mesa_stair_and_preset(driver, lab):
    """Mesa with ``stair="anchored"`` and with ``preset="authors-code"``
    (n=1400, T=1024) in the layout explorer: each draws the layout that
    ``layout(...)`` gives, its dropdown shows the value; screenshots
    ``layout_explorer_mesa_<choice>.png``."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    import mesa_viz as mv
    from mesa_viz import plots

    nb = new_notebook(metadata={"kernelspec": {"display_name": "Python 3", "language": "python",
                                               "name": "python3"}})
    nb.cells = [new_code_cell("from mesa_viz.widgets import layout_explorer")]
    nb.cells += [new_code_cell(src) for src, _ in CHOICE_VIEWS.values()]
    nbformat.write(nb, str(lab["root"] / "zz_layout_choices.ipynb"))
    run_notebook(driver, lab, "zz_layout_choices.ipynb")
    areas = driver.execute_script(
        "return [...document.querySelectorAll('.jp-Cell-outputArea')]"
        ".filter(a => a.querySelector('.widget-dropdown'))")
    assert len(areas) == len(CHOICE_VIEWS), f"{len(areas)} explorers drawn"
    for area, (choice, (_, params)) in zip(areas, CHOICE_VIEWS.items()):
        n = slider_value(control(driver, "slider", "seq_len", area))
        T = slider_value(control(driver, "slider", "train_length", area))
        (name, value), = params.items()
        assert [name, value] in driver.execute_script(DROPDOWNS, area), \
            driver.execute_script(DROPDOWNS, area)
        want = drawn_as(plots.layout_heatmap(mv.layout("mesa", n, train_length=T, **params)))
        wait_for(driver, lambda d: drawn_as_in(d, area) == want, 60,
                 f"mesa {params} (n={n}, T={T}) drawn as {want}")
        driver.execute_script(SHOW_FIGURE, area)          # the summary line, then the layout
        screenshot(driver, f"layout_explorer_mesa_{choice}", publish=True)
    assert not [t for t in driver.execute_script(CELL_ERRORS)], "errors in the notebook"


def drawn_as_in(drv, area) -> tuple | None:
    """``(title, shapes, annotations)`` of the first figure drawn in ``area``."""
    got = drv.execute_script(FIGURES, area)
    return (got[0]["title"], got[0]["shapes"], got[0]["annotations"]) if got else None


# -- a widget that runs the model: busy state and errors in the widget --------------------

BUSY_NOTEBOOK = [
    """import time
import mesa_viz as mv
from mesa_viz import widgets
from mesa_viz.models import tiny_model
from mesa_viz.analyses.passkey import make_sample
model, tok = tiny_model("llama", max_position_embeddings=64)
sample = make_sample(tok, 160, depth=0.5, seed=0)""",
    """def slow_trace(model, ids, method, **kwargs):      # a slow method, and one that fails
    if method != "origin":
        time.sleep(3)
    if method == "rerope":
        raise RuntimeError("injected failure while tracing rerope")
    return mv.trace(model, ids, method, **kwargs)

explorer = widgets.attention_explorer(
    model, tok, sample["input_ids"], methods=["origin", "mesa", "stair", "rerope"],
    needle=tuple(sample["needle_span"]), method_params={"stair": {"stair_width": 0}},
    trace=slow_trace, train_length=64)
explorer""",
]

RECORD = """
const area = arguments[0];
window.__seen = [];
const note = () => window.__seen.push(area.innerText + ' | titles: ' + [...area.querySelectorAll(
  '.gtitle')].map(t => t.textContent).join(' / '));
new MutationObserver(note).observe(area, {subtree: true, childList: true, characterData: true});
note();
"""


def test_model_widget_shows_busy_and_errors(driver, lab):
    """An attention explorer on the tiny model whose methods are traced slowly
    (``trace=``) or fail (``rerope`` raises; ``stair`` gets an invalid
    ``stair_width`` through ``method_params``): choosing one shows the busy
    line and a greyed, retitled figure while it runs, then the figure; an
    error raised in the callback appears in the widget itself."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook(metadata={"kernelspec": {"display_name": "Python 3", "language": "python",
                                               "name": "python3"}})
    nb.cells = [new_code_cell(src) for src in BUSY_NOTEBOOK]
    nbformat.write(nb, str(lab["root"] / "zz_busy_and_errors.ipynb"))
    run_notebook(driver, lab, "zz_busy_and_errors.ipynb")
    area = explorer_of(driver, "method")
    driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", area)
    driver.execute_script(RECORD, area)
    choose(driver, area, "method", "mesa")
    wait_for(driver, lambda d: "computing mesa" in area.text, 20, "the busy line")
    screenshot(driver, "lab_widget_busy")
    wait_for(driver, lambda d: "mesa: layer" in area.text and "computing" not in area.text, 60,
             "the mesa figure after the trace")
    seen = driver.execute_script("return window.__seen")
    busy = [t for t in seen if "computing mesa: tracing 160 tokens" in t]
    assert busy, seen[-3:]
    assert any("titles: busy: computing mesa" in t for t in busy), busy
    choose(driver, area, "method", "rerope")
    wait_for(driver, lambda d: "injected failure while tracing rerope" in area.text, 60,
             "the RuntimeError in the widget")
    assert "error: RuntimeError" in area.text and "not redrawn" in area.text
    screenshot(driver, "lab_widget_error")
    choose(driver, area, "method", "stair")
    wait_for(driver, lambda d: "invalid:" in area.text and "stair_width" in area.text, 60,
             "the ValueError of stair_width=0 in the widget")
    seen = driver.execute_script("return window.__seen")
    assert any("computing stair" in t for t in seen), "no busy line while tracing stair"
