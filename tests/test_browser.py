"""JupyterLab in a real browser: notebooks 01-05 run cell by cell through the UI, as a person would.

A `jupyter lab notebooks/` server on 127.0.0.1 (token, free port) serves a temporary copy of the
project; headless Chromium, driven by Playwright, opens each notebook, runs every cell from the Run
menu, waits for the kernel, saves, and checks what is on the page: no error output, an image in
every figure cell, tables as HTML tables, and a non-blank full-page screenshot (kept under the
test's tmp_path). In 02_train the log must stream into the cell while it runs, and an interrupt
from the toolbar followed by a re-run must resume from the checkpoint and end at the same bpb as
an uninterrupted run.

Two tests need no browser: one interrupts `notebook.launch` the way JupyterLab's stop button does,
one shows that a blank screenshot is refused.

Chromium is the system's (`apt-get install chromium`, found on PATH or at $DYNEVAL_CHROMIUM; Playwright's
browser download is not used). Without it or Playwright the tests skip, except under CI=true, where they
fail. The notebooks run the smoke profile shrunk by their `overrides` parameter (SMALL); the five
browser tests took 3.5 min (load ~6) to 7 min (load ~9) on 2 CPU cores shared with other jobs. They
run in order and share the server and its run folder.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO, run_cli

CHROMIUM = os.environ.get("DYNEVAL_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")

# The smoke profile cut down for 2 CPU cores: a 2-layer, 64-wide model, 30 steps with a log line each
# (to watch them stream, and time to interrupt), every evaluation variant on 2,049 validation tokens.
SMALL = ", ".join([
    "model.num_layers=2", "model.model_dim=64", "model.num_heads=2", "model.num_kv_heads=1", "model.xsa_last_n=1",
    "model.rope_dims=8", "model.bigram_vocab_size=64", "model.bigram_dim=16",
    "train.iterations=30", "train.train_batch_tokens=2048", "train.train_seq_len=128", "train.warmup_steps=1",
    "train.warmdown_iters=10", "train.val_loss_every=0", "train.max_val_tokens=2049", "train.checkpoint_every=10",
    "train.train_log_every=1", "optim.muon_momentum_warmup_steps=10",
    "eval.eval_seq_len=128", "eval.eval_stride=32", "eval.eval_batch_seqs=4", "eval.max_val_tokens=2049",
    "eval.ttt_chunk_tokens=512", "eval.ttt_epochs=1", "eval.ttt_batch_seqs=2", "eval.krause_batches=1"])
PARAMETERS = {
    "01_data": {"overrides": SMALL}, "02_train": {"overrides": SMALL}, "03_quantize": {"overrides": SMALL},
    "04_evaluate": {"overrides": SMALL},
    "05_report": {"runs_root": "runs/notebook", "figures_dir": "runs/notebook/figures"},
}
RUN_DIR = "runs/notebook/seed42"  # the notebooks' default run_dir, relative to the project root
CELL_TIMEOUT = 900  # seconds for one notebook's cells

# Everything the page shows about the open notebook's code cells, in order.
CELLS_JS = """() => [...document.querySelectorAll(
    '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell.jp-CodeCell')].map(c => ({
  prompt: c.querySelector('.jp-InputArea-prompt').textContent.trim(),
  text: [...c.querySelectorAll('.jp-OutputArea-output')].map(o => o.innerText).join('\\n'),
  stderr: [...c.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
    .map(o => o.innerText),
  images: [...c.querySelectorAll('.jp-OutputArea-output img')].map(i => [i.naturalWidth, i.naturalHeight]),
  tables: [...c.querySelectorAll('.jp-OutputArea-output table')].map(t => t.querySelectorAll('tbody tr').length),
}))"""


def _require_browser():
    missing = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing = "playwright is not installed (pip install -e '.[test]')"
    if not missing and not CHROMIUM:
        missing = "no chromium on PATH (apt-get install chromium, or set DYNEVAL_CHROMIUM)"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"browser suite under CI: {missing}")
        pytest.skip(missing)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def inject_parameters(path: Path, values: dict) -> None:
    """Add a cell after the `parameters` cell, as papermill does, to the .ipynb and its paired .py."""
    import jupytext
    import nbformat

    nb = nbformat.read(path, as_version=4)
    i = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    src = "# Parameters set by tests/test_browser.py\n" + "\n".join(f"{k} = {v!r}" for k, v in values.items())
    nb.cells.insert(i + 1, nbformat.v4.new_code_cell(src, metadata={"tags": ["injected-parameters"]}))
    nbformat.write(nb, path)
    jupytext.write(nb, path.with_suffix(".py"), fmt="py:percent")  # jupytext's contents manager reads the pair


# A stand-in for the kernel: one cell's `launch`, and what it raises.
KERNEL = """
import signal, sys
from dyneval import notebook
signal.signal(signal.SIGINT, signal.default_int_handler)  # as a kernel does, even when started with SIGINT ignored
try:
    notebook.launch(["train", "--config", sys.argv[1], "--out", sys.argv[2], "--resume"], nproc=1)
except KeyboardInterrupt as e:
    print("kernel: KeyboardInterrupt", e, flush=True)
    sys.exit(130)
"""


def test_an_interrupted_launch_waits_for_the_checkpoint_and_the_next_launch_resumes_bitwise(tmp_path, tiny_cfg):
    from dyneval.notebook import launch, write_config

    cfg = tiny_cfg.with_overrides(["train.iterations=12", "train.warmdown_iters=4", "train.train_log_every=1"])
    config, run = write_config(cfg, tmp_path / "config.json"), tmp_path / "run"
    kernel = subprocess.Popen([sys.executable, "-c", KERNEL, str(config), str(run)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
                              start_new_session=True)
    lines = []
    for line in kernel.stdout:
        lines.append(line)
        if re.match(r"step:3/\d+ train_loss", line):
            os.killpg(kernel.pid, signal.SIGINT)  # Jupyter's interrupt: SIGINT to the kernel's process group
            break
    lines += kernel.stdout.readlines()
    kernel.wait(timeout=120)
    text = "".join(lines)
    assert kernel.returncode == 130, text[-3000:]
    stopped = re.search(r"checkpoint: step (\d+) \(interrupted\)", text)
    assert stopped and text.index(stopped.group(0)) < text.index("kernel: KeyboardInterrupt"), text[-3000:]
    step = int(stopped.group(1))
    assert 3 <= step < 12 and (run / "checkpoint.pt").is_file() and not (run / "meta.json").exists()

    log = []
    launch(["train", "--config", str(config), "--out", str(run), "--resume"], nproc=1, log=log.append)
    assert f"resumed from {run / 'checkpoint.pt'} at step {step} " in "\n".join(log), log[-5:]
    r = run_cli("train", "--config", config, "--out", tmp_path / "uninterrupted")
    assert r.returncode == 0, r.stderr[-2000:]
    resumed, straight = (json.loads((d / "meta.json").read_text()) for d in (run, tmp_path / "uninterrupted"))
    assert [h["train_loss"] for h in resumed["history"]["train"]] == [h["train_loss"] for h in straight["history"]["train"]]
    assert resumed["final_ema"]["bpb"] == straight["final_ema"]["bpb"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """`jupyter lab notebooks/` from a temporary copy of the project; yields (base_url, token, project)."""
    _require_browser()
    project = tmp_path_factory.mktemp("project")
    ignore = shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints")
    for name in ("dyneval", "notebooks"):
        shutil.copytree(REPO / name, project / name, ignore=ignore)
    for name, values in PARAMETERS.items():
        inject_parameters(project / "notebooks" / f"{name}.ipynb", values)
    home = tmp_path_factory.mktemp("jupyter")
    settings = home / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')  # no news toast
    env = {**os.environ, "PYTHONPATH": str(project), "JUPYTER_CONFIG_DIR": str(home / "config"),
           "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
           "JUPYTER_RUNTIME_DIR": str(home / "runtime")}
    port, token = _free_port(), secrets.token_hex(16)
    log = open(home / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "notebooks/", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", "--allow-root", "--LabApp.news_url=None",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"jupyter lab did not start:\n{(home / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
    yield base, token, project
    os.killpg(server.pid, signal.SIGTERM)  # the server shuts down the kernels it started
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
    log.close()


@pytest.fixture(scope="module")
def browser(lab):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--no-sandbox", "--disable-dev-shm-usage"])  # CI runs as root, in a container
        yield b
        b.close()


class Notebook:
    """One notebook open in JupyterLab, driven through its menus, toolbar and keyboard."""

    def __init__(self, browser, lab, name: str, shots: Path):
        base, self.token, self.project = lab
        self.base, self.name, self.shots = base, name, shots
        self.page = browser.new_page(viewport={"width": 1400, "height": 1000})
        self.page.set_default_timeout(60_000)
        self.page.goto(f"{base}/lab/tree/{name}.ipynb?reset&token={self.token}")
        self.page.wait_for_selector(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell")
        self.wait_idle(120)
        self.menu("View", "File Browser")  # toggled closed: more room for the figures

    def status(self) -> str:
        return self.page.get_attribute(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-ExecutionIndicator",
                                       "data-status") or ""

    def cells(self) -> list[dict]:
        return self.page.evaluate(CELLS_JS)

    def menu(self, top: str, item: str) -> None:
        self.page.get_by_role("menuitem", name=top, exact=True).click()
        self.page.locator(".lm-Menu-item", has_text=re.compile(rf"^{re.escape(item)}(Ctrl|Shift|$)")).click()

    def wait_idle(self, timeout: float = CELL_TIMEOUT, while_busy=None) -> None:
        """Until the kernel is idle with no cell running or queued (`while_busy()` is polled meanwhile)."""
        deadline, quiet = time.monotonic() + timeout, 0
        while quiet < 3:  # idle on three polls in a row: not the gap between two queued cells
            if time.monotonic() > deadline:
                self.screenshot("timeout")
                raise AssertionError(f"{self.name}: kernel still {self.status()!r} after {timeout} s; prompts "
                                     f"{[c['prompt'] for c in self.cells()]}")
            busy = self.status() != "idle" or any(c["prompt"] == "[*]:" for c in self.cells())
            quiet = 0 if busy else quiet + 1
            if busy and while_busy and while_busy():
                return
            time.sleep(0.3)

    def accept_kernel_dialog(self) -> None:
        """Under load JupyterLab may ask which kernel to start (its first one was slow to answer): take the
        preferred one, the notebook's python3, as a person would."""
        dialog = self.page.locator(".jp-Dialog")
        if dialog.count():
            dialog.get_by_role("button", name="Select", exact=True).click()
            self.wait_idle(120)

    def run_all(self, **wait) -> None:
        self.start_all()
        self.wait_idle(**wait)

    def start_all(self) -> None:
        """Run ▸ Run All Cells, until some cell is queued or running.

        On a loaded machine the click can come before the notebook takes commands, and nothing runs: an
        idle kernel would then end the wait at once. Wait for some cell to be queued; click again, twice at most.
        """
        for attempt in range(3):
            self.accept_kernel_dialog()
            self.menu("Run", "Run All Cells")
            deadline = time.monotonic() + 45
            while all(c["prompt"] == "[ ]:" for c in self.cells()) and time.monotonic() < deadline:
                time.sleep(0.3)
            if not all(c["prompt"] == "[ ]:" for c in self.cells()):
                return
            self.screenshot(f"run_all_not_started_{attempt}")

    def save(self) -> dict:
        """Ctrl+S, then the notebook as saved: what the frontend held, with each output's type."""
        path = self.project / "notebooks" / f"{self.name}.ipynb"
        before = path.stat().st_mtime_ns
        self.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook").click(position={"x": 5, "y": 5})
        self.page.keyboard.press("Control+s")
        deadline = time.monotonic() + 30
        while path.stat().st_mtime_ns == before:
            assert time.monotonic() < deadline, f"{self.name}: Ctrl+S did not save the notebook"
            time.sleep(0.3)
        time.sleep(0.5)  # written in one go by the contents manager, but let it finish
        return json.loads(path.read_text())

    def check_cells(self, figure_cells: int, table_cells: int) -> list[dict]:
        """Every cell ran without an error; figures show images and tables are HTML tables."""
        cells = self.cells()
        saved = self.save()
        code = [c for c in saved["cells"] if c["cell_type"] == "code"]
        assert len(cells) == len(code) > 1, (len(cells), len(code))
        for i, (shown, cell) in enumerate(zip(cells, code)):
            where = f"{self.name} cell {i + 1}:\n{''.join(cell['source'])[:300]}"
            errors = [o for o in cell.get("outputs", []) if o["output_type"] == "error"]
            assert not errors, f"{where}\nraised {errors[0]['ename']}: {errors[0]['evalue']}\n{shown['text'][-1500:]}"
            assert not any("Traceback" in t for t in shown["stderr"]), f"{where}\n{shown['stderr']}"
            assert re.fullmatch(r"\[\d+\]:", shown["prompt"]), f"{where}\nnot run: prompt {shown['prompt']}"
        figures = [(c, s) for c, s in zip(code, cells) if re.search(r"plt\.show\(\)|display\(Image\(", "".join(c["source"]))]
        assert len(figures) == figure_cells, f"{self.name}: {len(figures)} figure cells, expected {figure_cells}"
        for c, s in figures:
            assert s["images"] and all(w > 200 and h > 100 for w, h in s["images"]), \
                f"{self.name}: no image rendered for\n{''.join(c['source'])[:300]}\n{s['images']}"
        tables = [(c, s) for c, s in zip(code, cells) if "ablation.md" in "".join(c["source"])]  # the variants table (04's published-run cell is text on smoke)
        assert len(tables) == table_cells, f"{self.name}: {len(tables)} table cells, expected {table_cells}"
        for c, s in tables:
            assert s["tables"] and max(s["tables"]) >= 11, f"{self.name}: no HTML table of the variants: {s['tables']}"
        return cells

    def screenshot(self, suffix: str = "") -> Path:
        """The whole notebook in one image: the window is grown to the notebook's height first."""
        panel = ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-WindowedPanel-outer"
        height = self.page.evaluate("""(sel) => {
            const p = document.querySelector(sel), cells = p.querySelectorAll('.jp-Cell');
            const last = cells[cells.length - 1].getBoundingClientRect().bottom;
            return last - p.getBoundingClientRect().top + p.scrollTop; }""", panel)
        self.page.set_viewport_size({"width": 1400, "height": int(min(max(1000, height + 160), 16000))})
        time.sleep(0.5)
        self.page.evaluate("(sel) => { document.querySelector(sel).scrollTop = 0; }", panel)
        time.sleep(1.0)  # relayout, and outputs that were off-screen painted
        self.shots.mkdir(parents=True, exist_ok=True)
        path = self.shots / f"{self.name}{'_' + suffix if suffix else ''}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def close(self) -> None:
        self.page.close()
        _shutdown_kernels(self.base, self.token)


def _shutdown_kernels(base: str, token: str) -> None:
    """Each notebook's kernel goes when its test ends: two cores are not enough for five idle torch kernels."""
    with urllib.request.urlopen(f"{base}/api/sessions?token={token}", timeout=30) as r:
        sessions = json.loads(r.read())
    for s in sessions:
        req = urllib.request.Request(f"{base}/api/sessions/{s['id']}?token={token}", method="DELETE")
        urllib.request.urlopen(req, timeout=60).close()


def assert_not_blank(path: Path) -> None:
    """A screenshot shows something: many colours, and a good share of pixels that are not background."""
    import numpy as np
    from PIL import Image

    img = np.asarray(Image.open(path).convert("RGB")).astype(np.int32)
    rgb = (img[..., 0] << 16 | img[..., 1] << 8 | img[..., 2]).ravel()
    colours = len(np.unique(rgb))
    ink = (rgb != np.bincount(rgb).argmax()).mean()
    assert colours > 50 and ink > 0.03, f"{path} looks blank: {colours} colours, {ink:.1%} non-background pixels"


def test_a_blank_screenshot_is_refused(tmp_path):
    from PIL import Image, ImageDraw

    Image.new("RGB", (1400, 1000), "white").save(tmp_path / "blank.png")
    with pytest.raises(AssertionError, match="looks blank"):
        assert_not_blank(tmp_path / "blank.png")
    page = Image.new("RGB", (1400, 1000), "white")
    draw = ImageDraw.Draw(page)
    for y in range(0, 1000, 12):
        draw.text((10, y), "step:3/30 train_loss:6.8693 " * 8, fill=(y % 256, 40, 90))
    page.save(tmp_path / "page.png")
    assert_not_blank(tmp_path / "page.png")


@pytest.fixture
def open_notebook(browser, lab, tmp_path):
    opened = []

    def open_(name: str) -> Notebook:
        nb = Notebook(browser, lab, name, tmp_path / "screenshots")
        opened.append(nb)
        return nb

    yield open_
    for nb in opened:
        nb.close()


def _finish(nb: Notebook, figure_cells: int, table_cells: int) -> list[dict]:
    cells = nb.check_cells(figure_cells, table_cells)
    assert_not_blank(nb.screenshot())
    return cells


@pytest.mark.browser
def test_01_data_builds_the_corpus_under_the_project_root_not_the_notebook_folder(lab, open_notebook):
    _, _, project = lab
    nb = open_notebook("01_data")
    nb.run_all()
    cells = _finish(nb, figure_cells=0, table_cells=0)
    assert (project / "data" / "datasets" / "embedded_sp1024").is_dir()  # data_root="data", cwd notebooks/
    assert not (project / "notebooks" / "data").exists()
    assert any("bytes per token" in c["text"] for c in cells)


@pytest.mark.browser
def test_02_train_streams_its_log_and_resumes_after_an_interrupt_at_the_uninterrupted_bpb(lab, open_notebook,
                                                                                          tmp_path):
    _, _, project = lab
    run = project / RUN_DIR
    nb = open_notebook("02_train")
    code = [c for c in json.loads((project / "notebooks" / "02_train.ipynb").read_text())["cells"]
            if c["cell_type"] == "code"]
    train_cell = next(i for i, c in enumerate(code) if "train_stage" in "".join(c["source"]))
    seen = []  # (seconds, step lines shown) while the training cell runs

    def watch() -> bool:
        c = nb.cells()[train_cell]
        if c["prompt"] != "[*]:":
            return False
        steps = re.findall(r"step:(\d+)/\d+ train_loss", c["text"])
        if not seen or len(steps) != seen[-1][1]:
            seen.append((time.monotonic(), len(steps)))
        return len(steps) >= 8  # interrupt now: several steps in, most of the run still ahead

    nb.start_all()
    nb.wait_idle(while_busy=watch)
    assert seen and seen[-1][1] >= 8, f"training ended before it could be interrupted: {seen}"
    # streaming: the step lines arrived one after another while the cell was still running
    counts = [n for _, n in seen if n]
    # (two growing counts below the final one suffice: on a loaded box the page is sampled seconds apart;
    # output dumped at the end would show one count only)
    assert len(counts) >= 2 and counts == sorted(counts) and counts[0] < 8, f"log did not stream into the cell: {seen}"

    nb.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) [data-command='notebook:interrupt-kernel']").click()
    nb.wait_idle(300)
    text = nb.cells()[train_cell]["text"]
    interrupted = re.search(r"checkpoint: step (\d+) \(interrupted\)", text)
    assert "KeyboardInterrupt" in text and interrupted, f"no interrupted checkpoint in the cell:\n{text[-2000:]}"
    # it stopped by itself at a step boundary (130), not terminated by the cell after the timeout
    assert "interrupted (exit status 130)" in text, f"the training process did not stop by itself:\n{text[-2000:]}"
    step = int(interrupted.group(1))
    assert 0 < step < 30 and (run / "checkpoint.pt").is_file() and not (run / "meta.json").exists()
    nb.screenshot("interrupted")

    # re-run the training cell (and the figure below it), as a person would after an interrupt
    nb.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell.jp-CodeCell .jp-InputPrompt").nth(train_cell).click()
    nb.menu("Run", "Run Selected Cell and All Below")
    nb.wait_idle()
    cells = _finish(nb, figure_cells=2, table_cells=0)  # the schedules before training, the curves after
    text = cells[train_cell]["text"]
    assert f"resumed from {run / 'checkpoint.pt'} at step {step}" in text, text[-2000:]
    assert "step:30/30 train_loss" in text and "final_ema" in text

    # the same config trained without interruption, from the command line
    reference = tmp_path / "uninterrupted"
    r = run_cli("train", "--config", run / "config.json", "--out", reference, timeout=900, cwd=project,
                env={"PYTHONPATH": str(project)})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    resumed, straight = (json.loads((d / "meta.json").read_text()) for d in (run, reference))
    assert resumed["config"] == straight["config"] and resumed["steps"] == straight["steps"] == 30
    assert resumed["final_ema"]["bpb"] == straight["final_ema"]["bpb"], (resumed["final_ema"], straight["final_ema"])
    shown = re.search(r"EMA weights: val bpb (\d+\.\d+)", cells[-1]["text"])
    assert shown and float(shown.group(1)) == round(straight["final_ema"]["bpb"], 4), cells[-1]["text"]


@pytest.mark.browser
def test_03_quantize_reads_the_artifact_of_the_notebook_run(open_notebook):
    nb = open_notebook("03_quantize")
    nb.run_all()
    cells = _finish(nb, figure_cells=0, table_cells=0)
    assert any("(under the 16,000,000 cap" in c["text"] for c in cells)


@pytest.mark.browser
def test_04_evaluate_renders_the_ablation_table_and_the_cumulative_bpb_figure(open_notebook):
    nb = open_notebook("04_evaluate")
    nb.run_all()
    cells = _finish(nb, figure_cells=1, table_cells=1)
    # the legality check on a short prefix: the run's pre-eval TTT caught, the legal adaptations not
    assert any("pre_eval_ttt: NOT prefix-invariant" in c["text"] for c in cells), [c["text"][-500:] for c in cells]
    assert any("dynamic_krause: prefix-invariant [marked legal]" in c["text"] for c in cells)


@pytest.mark.browser
def test_05_report_renders_its_table_and_five_figures(lab, open_notebook):
    _, _, project = lab
    nb = open_notebook("05_report")
    nb.run_all()
    _finish(nb, figure_cells=5, table_cells=1)
    for name in ("cumulative_bpb", "eval_budget"):
        assert (project / "runs" / "notebook" / "figures" / f"{name}.png").is_file()
