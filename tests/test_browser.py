"""The course in a real browser: JupyterLab in headless Chromium, driven by Playwright (marker ``browser``).

nbval runs notebooks without JavaScript; this test runs them where students do. It starts JupyterLab on
127.0.0.1 (a free port, a random token, every Jupyter folder in a temporary directory, kernels in quick
mode), copies the quick-mode solution notebooks there (the repo is never written), and in Chromium:

- notebook 00: runs all cells from the Run menu and checks that the dataset grid renders as an image;
- notebook 04: runs all cells, checks that no cell shows an error, moves the w slider of the guidance
  explorer on the shipped reference model with ArrowRight keys and checks that the displayed image
  changed (its PNG bytes);
- notebook 06: the same for the latent lesson, whose two explorers show decoded tiles: the w slider of the
  class-conditional latent model and the prompt explorer of the cross-attention model, whose slider is moved.

Screenshots go to ``$DLCOURSE_BROWSER_ARTIFACTS`` or ``test-artifacts/browser/`` (printed at the end of
the run). Deselected unless asked for: ``python -m pytest -m browser``. Skipped with a one-line reason
when Chromium or Playwright is missing, a failure under ``CI=true``. The whole module shares one time
budget (``TOTAL_SECONDS``); every wait has its own timeout as well.
"""
from __future__ import annotations

import base64
import contextlib
import importlib.util
import io
import os
import re
import time
from pathlib import Path

import nbformat
import pytest

from browser_support import (ARTIFACTS_KEY, CHROMIUM_FLAGS, SCREENSHOTS, Deadline, JupyterLab, artifacts_dir,
                             find_chromium, readout_value, unavailable_action, unavailable_reason)
from dlcourse.widgets import MINUS

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ("00_welcome.ipynb", "04_classifier_free_guidance.ipynb", "06_latent_diffusion.ipynb")
TOTAL_SECONDS = 270  # the module's budget: server, browser and the three notebooks (4.5 minutes at most)
RUN_CAP = {"00_welcome.ipynb": 60, "04_classifier_free_guidance.ipynb": 110,
           "06_latent_diffusion.ipynb": 100}  # seconds for "run all"
ARROW_PRESSES, SLIDER_STEP = 4, 0.5  # w: 0 → 2 (the explorer samples w = −2, −1.5, …, 10)

# The state of the open notebook, read from the page: prompts ("[3]:", "[*]:", "[ ]:"), error outputs
# (JupyterLab renders an error as a stderr output with a traceback: tell the two apart by its text) and the
# toolbar's kernel indicator.
STATE_JS = r"""() => {
  const cells = [...document.querySelectorAll('.jp-NotebookPanel .jp-Notebook .jp-CodeCell')];
  const prompts = cells.map(c => (c.querySelector('.jp-InputPrompt')?.textContent || '').trim());
  const errors = [];
  cells.forEach((cell, i) => {
    cell.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]').forEach(o => {
      const text = o.textContent || '';
      const last = text.trim().split('\n').pop() || '';
      if (/Traceback \(most recent call last\)/.test(text) || /^\w*(Error|Exception|Interrupt)\b/.test(last))
        errors.push(`cell ${i} (${prompts[i]}): ${last}`);
    });
  });
  const indicator = document.querySelector('.jp-NotebookPanel .jp-Notebook-ExecutionIndicator');
  return {prompts, errors, status: indicator ? indicator.getAttribute('data-status') : null,
          dialog: document.querySelector('.jp-Dialog')?.textContent || null};
}"""

STATUS_BAR_JS = "() => [...document.querySelectorAll('.jp-StatusBar-TextItem')].map(e => e.textContent).join(' / ')"
KERNEL_READY_JS = r"""() =>
  document.querySelector('.jp-NotebookPanel .jp-Notebook-ExecutionIndicator')?.getAttribute('data-status') === 'idle'
  && [...document.querySelectorAll('.jp-StatusBar-TextItem')]
       .some(e => /^(?!No Kernel).+ \| Idle$/.test(e.textContent.trim()))"""

# PNG bytes (base64) of an <img>, whatever its src: a data: URL (matplotlib) or a blob: URL (ipywidgets).
IMAGE_BYTES_JS = r"""async (img) => {
  const blob = await (await fetch(img.src)).blob();
  const buffer = new Uint8Array(await blob.arrayBuffer());
  let binary = '';
  for (let i = 0; i < buffer.length; i += 0x8000) binary += String.fromCharCode(...buffer.subarray(i, i + 0x8000));
  return {bytes: btoa(binary), complete: img.complete, naturalWidth: img.naturalWidth};
}"""

@pytest.fixture(scope="module")
def deadline() -> Deadline:
    return Deadline(TOTAL_SECONDS)


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium(os.environ)
    has_playwright = importlib.util.find_spec("playwright") is not None
    action = unavailable_action(unavailable_reason(path, has_playwright, os.environ), os.environ)
    if action is not None:
        kind, message = action
        if kind == "fail":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def artifacts(request) -> Path:
    folder = artifacts_dir(os.environ, ROOT)
    folder.mkdir(parents=True, exist_ok=True)
    for old in SCREENSHOTS:  # this test's own files only: the folder may be a user's
        (folder / old).unlink(missing_ok=True)
    request.config.stash[ARTIFACTS_KEY] = folder
    print(f"\nbrowser test screenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def lab(chromium, tmp_path_factory, deadline):
    """JupyterLab serving copies of the notebooks from a temporary folder; shut down even on failure."""
    base = tmp_path_factory.mktemp("browser")
    served = base / "course"
    served.mkdir()
    for name in NOTEBOOKS:
        nb = nbformat.read(ROOT / "solutions" / name, as_version=4)
        for cell in nb.cells:  # the masters are committed without outputs; make sure of it in the copy
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        nbformat.write(nb, served / name)
    server = JupyterLab(base / "jupyter", served, os.environ)
    try:
        server.start(timeout=deadline.timeout(45))
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser(chromium, lab, tmp_path_factory, deadline):
    """A fresh headless Chromium profile driven by Playwright (the Debian browser, not a download)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=chromium, headless=True,
            args=list(CHROMIUM_FLAGS), viewport={"width": 1400, "height": 1000},
            timeout=deadline.timeout(30) * 1000)
        context.set_default_timeout(30_000)
        try:
            yield context
        finally:
            context.close()


def shot(page, folder: Path, name: str, top=None) -> Path:
    """A screenshot of the window as a student sees it, scrolled so that ``top`` (a locator) starts it."""
    if top is not None:
        top.evaluate("el => el.scrollIntoView({block: 'start'})")
        page.wait_for_timeout(300)  # let JupyterLab finish the scroll before the picture
    path = folder / name
    page.screenshot(path=str(path))
    return path


def failure_shot(page, folder: Path, name: str) -> None:
    """The window at the moment a test failed, if the page can still take one."""
    try:
        shot(page, folder, name)
    except Exception as error:  # the page or browser is gone: the failure itself says more
        print(f"no failure screenshot {name}: {error}")


def open_notebook(page, lab: JupyterLab, name: str, deadline: Deadline, folder: Path) -> None:
    """Show ``name`` alone in ``page`` (a workspace of its own) and wait until its kernel is ready."""
    workspace = name.split("_")[0]
    page.goto(lab.url(f"lab/workspaces/nb{workspace}/tree/{name}"), timeout=deadline.timeout(45) * 1000)
    page.wait_for_selector(".jp-NotebookPanel .jp-Notebook .jp-CodeCell", timeout=deadline.timeout(45) * 1000)
    # The toolbar's indicator says "idle" before any kernel exists ("No Kernel | Initializing"), and cells
    # run from the menu before the kernel has connected are not executed at all: wait for the status bar's
    # "<kernel> | Idle" and for the server's session of this notebook with a connected, idle kernel.
    end = time.monotonic() + deadline.timeout(45)
    while time.monotonic() < end:
        ready = page.evaluate(KERNEL_READY_JS)
        sessions = [s for s in lab.api("api/sessions") if s.get("path") == name]
        if ready and sessions and all(s["kernel"]["execution_state"] == "idle" and s["kernel"].get("connections", 1)
                                      for s in sessions):
            return
        time.sleep(0.25)
    failure_shot(page, folder, f"{name[:2]}_failure.png")
    pytest.fail(f"{name}: the kernel did not become ready; status bar: {page.evaluate(STATUS_BAR_JS)}")


def code_cells(name: str, lab: JupyterLab) -> list[nbformat.NotebookNode]:
    nb = nbformat.read(lab.root_dir / name, as_version=4)
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def run_all(page, lab: JupyterLab, name: str, deadline: Deadline, folder: Path) -> dict:
    """Run all cells from the Run menu; wait until every code cell has an execution count and the kernel
    is idle. Fails at once on an error output or a dialog, and when the time is up."""
    n_code = len(code_cells(name, lab))
    assert n_code > 0
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click(timeout=deadline.timeout(10) * 1000)
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click(
        timeout=deadline.timeout(10) * 1000)
    end = time.monotonic() + deadline.timeout(RUN_CAP[name])
    state: dict = {}
    while time.monotonic() < end:
        state = page.evaluate(STATE_JS)
        if state["errors"] or state["dialog"]:
            break
        numbered = [p for p in state["prompts"] if p[1:-2].isdigit()]
        if len(numbered) == n_code and state["status"] == "idle" and set(lab.kernel_states()) == {"idle"}:
            return state
        time.sleep(0.5)
    assert not state.get("dialog"), f"{name}: JupyterLab showed a dialog: {state['dialog']}"
    assert not state.get("errors"), f"{name}: a cell shows an error: {state['errors']}"
    pytest.fail(f"{name}: not finished in time; prompts {state.get('prompts')}, kernel {state.get('status')}")


def save_and_read(page, lab: JupyterLab, name: str, deadline: Deadline) -> nbformat.NotebookNode:
    """Save from the page (Ctrl+S) and read the file back once it holds every execution count."""
    before = (lab.root_dir / name).stat().st_mtime_ns
    page.locator(".jp-NotebookPanel .jp-Notebook").first.click(position={"x": 5, "y": 5})
    page.keyboard.press("Control+s")
    end = time.monotonic() + deadline.timeout(20)
    while time.monotonic() < end:
        path = lab.root_dir / name
        if path.stat().st_mtime_ns != before:
            try:
                nb = nbformat.read(path, as_version=4)
            except Exception:  # half-written: try again
                nb = None
            if nb is not None and all(c.execution_count for c in nb.cells if c.cell_type == "code"):
                return nb
        time.sleep(0.25)
    pytest.fail(f"{name}: saving from JupyterLab did not write the executed notebook")


def error_outputs(nb) -> list[str]:
    return [f"{o.get('ename')}: {o.get('evalue')}" for c in nb.cells if c.cell_type == "code"
            for o in c.get("outputs", []) if o.get("output_type") == "error"]


def png_pixels(data: bytes):
    """The RGB pixels (H × W × 3 uint8 array) of PNG bytes."""
    import numpy as np
    from PIL import Image

    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not PNG bytes"
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def png_info(data: bytes) -> tuple[int, int, float]:
    """(width, height, pixel standard deviation) of PNG bytes."""
    pixels = png_pixels(data)
    return pixels.shape[1], pixels.shape[0], float(pixels.astype("float32").std())


@contextlib.contextmanager
def notebook_run(browser, lab, name, deadline, artifacts, failure_png):
    """A page with notebook ``name`` opened and run from the Run menu; on any failure a screenshot
    ``failure_png``; the page closed and the kernels shut down in every case."""
    page = browser.new_page()
    try:
        open_notebook(page, lab, name, deadline, artifacts)
        run_all(page, lab, name, deadline, artifacts)
        yield page
    except BaseException:
        failure_shot(page, artifacts, failure_png)
        raise
    finally:
        page.close()
        lab.shutdown_kernels()


def test_notebook_00_dataset_grid_renders_as_an_image(browser, lab, deadline, artifacts):
    name = "00_welcome.ipynb"
    with notebook_run(browser, lab, name, deadline, artifacts, "00_failure.png") as page:
        index = next(i for i, c in enumerate(code_cells(name, lab)) if "show_images(ds.images" in c.source)
        output = page.locator(".jp-NotebookPanel .jp-Notebook .jp-CodeCell").nth(index).locator(".jp-OutputArea")
        image = output.locator("img").first
        image.wait_for(state="visible", timeout=deadline.timeout(20) * 1000)
        image.scroll_into_view_if_needed()
        info = image.evaluate(IMAGE_BYTES_JS)
        width, height, spread = png_info(base64.b64decode(info["bytes"]))
        assert info["complete"] and info["naturalWidth"] == width, "the browser did not decode the grid"
        assert width >= 300 and height >= 300, f"the dataset grid is only {width}×{height}"
        assert spread > 10, "the dataset grid is a blank image"
        shot(page, artifacts, "00_dataset_grid.png", top=output)
        assert not error_outputs(save_and_read(page, lab, name, deadline))


def move_w_slider(page, explorer, deadline: Deadline, artifacts: Path, prefix: str) -> tuple[bytes, bytes]:
    """Press ArrowRight ARROW_PRESSES times on ``explorer``'s w slider, one key at a time, and check that the
    readout, the caption and the displayed PNG followed; screenshots ``{prefix}_before.png`` and
    ``{prefix}_after.png``. Returns the PNG bytes shown before and after."""
    explorer.wait_for(state="visible", timeout=deadline.timeout(20) * 1000)
    explorer.scroll_into_view_if_needed()
    handle = explorer.locator(".widget-slider .noUi-handle").first
    readout = explorer.locator(".widget-slider .widget-readout").first
    image = explorer.locator("img").first
    before = base64.b64decode(image.evaluate(IMAGE_BYTES_JS)["bytes"])
    w_before = readout.inner_text(timeout=5000).strip()
    shot(page, artifacts, f"{prefix}_before.png", top=explorer)

    w_expected = readout_value(w_before)
    for _ in range(ARROW_PRESSES):  # one key at a time, each seen by the slider before the next
        w_expected += SLIDER_STEP
        handle.focus()
        page.keyboard.press("ArrowRight")
        page.wait_for_function(
            "([el, w, minus]) => Math.abs(parseFloat(el.textContent.replace(minus, '-')) - w) < 1e-6",
            arg=[readout.element_handle(), w_expected, MINUS], timeout=deadline.timeout(10) * 1000)
    after, end = before, time.monotonic() + deadline.timeout(20)
    while time.monotonic() < end:
        after = base64.b64decode(image.evaluate(IMAGE_BYTES_JS)["bytes"])
        if after != before:
            break
        time.sleep(0.25)
    w_after = readout.inner_text(timeout=5000).strip()
    shot(page, artifacts, f"{prefix}_after.png", top=explorer)

    assert readout_value(w_after) == pytest.approx(readout_value(w_before) + SLIDER_STEP * ARROW_PRESSES), \
        f"ArrowRight ×{ARROW_PRESSES} moved w from {w_before} to {w_after}"
    assert after != before, f"the image did not change when w moved from {w_before} to {w_after}"
    pixels_before, pixels_after = png_pixels(before), png_pixels(after)
    assert pixels_before.shape == pixels_after.shape and (pixels_before != pixels_after).any(), \
        "the new PNG shows the same pixels"
    for data in (before, after):
        width, height, _ = png_info(data)
        assert width >= 300 and height > 0
    caption_w = f"{readout_value(w_after):g}".replace("-", MINUS)  # the caption writes −, as the readout does
    assert f"w = {caption_w}" in explorer.inner_text(), "the caption does not name the new w"
    return before, after


def explorers(page):
    """The output areas that hold an explorer: a slider and an image."""
    return page.locator(".jp-OutputArea-output").filter(has=page.locator(".widget-slider")).filter(
        has=page.locator("img"))


def test_notebook_04_runs_and_the_w_slider_changes_the_image(browser, lab, deadline, artifacts):
    name = "04_classifier_free_guidance.ipynb"
    with notebook_run(browser, lab, name, deadline, artifacts, "04_failure.png") as page:
        nb = save_and_read(page, lab, name, deadline)
        assert not error_outputs(nb), f"{name}: error outputs in the saved notebook: {error_outputs(nb)}"
        # the last explorer: the shipped reference model's (trained flowers), after the student's quick-mode one
        move_w_slider(page, explorers(page).last, deadline, artifacts, "04_guidance_explorer")


def test_notebook_06_runs_and_the_latent_explorers_show_decoded_tiles(browser, lab, deadline, artifacts):
    name = "06_latent_diffusion.ipynb"
    with notebook_run(browser, lab, name, deadline, artifacts, "06_failure.png") as page:
        nb = save_and_read(page, lab, name, deadline)
        assert not error_outputs(nb), f"{name}: error outputs in the saved notebook: {error_outputs(nb)}"
        found = explorers(page)
        # the latent w slider, the student's prompt explorer, then the shipped reference 06_latent's
        assert found.count() == 3, f"{name}: expected the latent w slider and two prompt explorers (the lesson's " \
                                   f"and the shipped reference's), found {found.count()} explorers"
        slider, prompts, reference = found.nth(0), found.nth(1), found.nth(2)
        assert reference.locator(".widget-text input").count() == 1 and "prompt: 'a white rose'" in \
            reference.inner_text(), "the shipped reference's prompt explorer has no text box or caption"
        reference_tiles = base64.b64decode(reference.locator("img").first.evaluate(IMAGE_BYTES_JS)["bytes"])
        assert png_info(reference_tiles)[2] > 5, "the shipped reference's explorer shows a blank tile"
        assert slider.locator(".widget-text").count() == 0 and "columns: " in slider.inner_text()
        tiles = base64.b64decode(slider.locator("img").first.evaluate(IMAGE_BYTES_JS)["bytes"])
        assert png_info(tiles)[0] >= 300 and png_info(tiles)[2] > 5, "the latent w slider shows no decoded tiles"
        shot(page, artifacts, "06_latent_explorer.png", top=slider)
        assert prompts.locator(".widget-text input").count() == 1, "the prompt explorer has no text box"
        assert "prompt: 'a white rose'" in prompts.inner_text()
        before, after = move_w_slider(page, prompts, deadline, artifacts, "06_prompt_explorer")
        for data in (before, after):  # decoded 32×32 tiles, enlarged: a picture, not a flat colour
            assert png_info(data)[2] > 5, "the prompt explorer shows a blank tile"
