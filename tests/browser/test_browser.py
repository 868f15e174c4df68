"""End to end: `streamlit run app.py` on 127.0.0.1, driven in headless Chromium by Playwright."""
from __future__ import annotations

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

from conftest import FORMATS, REPO, fresh_workspace

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed")]
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync", "--disable-quic"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_app(home, log=None, **settings: str):
    """`streamlit run app.py` on a free port of 127.0.0.1 with the workspace ``home`` and this process's environment
    plus ``settings`` (no OpenAI key unless ``settings`` gives one); yields its URL, stops it after. ``log``: a
    file the server's output goes to (default: a temporary file; never a pipe nobody reads, whose full buffer
    would stop the server mid-answer)."""
    import tempfile

    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"} | {"CXR_HOME": str(home), **settings}
    port = _free_port()
    out = log or tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.address",
         "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false"],
        cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    try:
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.5)
        else:
            proc.kill()
            proc.wait()
            out.seek(0)
            pytest.fail("streamlit did not start: " + out.read().decode(errors="replace")[-2000:])
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:  # a busy machine: stop it hard
                os.killpg(proc.pid, 9)
                proc.wait()
        if log is None:
            out.close()


def body_with(page, *texts, timeout: float = 120_000, log: Path | None = None) -> str:
    """The page's text once every one of ``texts`` (strings, or compiled regular expressions) is on it. An answer
    is drawn element by element (seen: one model's "feature cells" caption on the page before the rest of the
    answer was): a test waits for all it will assert on, then reads. A timeout says what the page shows (and the
    end of the app server's ``log``, where given)."""
    wanted = [{"re": t.pattern} if isinstance(t, re.Pattern) else {"s": t} for t in texts]
    try:
        page.wait_for_function("ws => ws.every(w => w.re ? new RegExp(w.re).test(document.body.innerText) "
                               ": document.body.innerText.includes(w.s))", arg=wanted, timeout=timeout)
    except Exception as exc:   # say what the page shows instead
        text = page.inner_text("body")
        missing = [t for t in texts if not (t.search(text) if isinstance(t, re.Pattern) else t in text)]
        served = f"\nThe server's log ends:\n{log.read_text(errors='replace')[-3000:]}" if log else ""
        raise AssertionError(f"{missing} not on the page after {timeout / 1000:.0f} s; it shows:\n{text[-3000:]}"
                             + served) from exc
    return page.inner_text("body")


def open_compare(page, url: str) -> None:
    """The Compare page at ``url``, once its first script run has ended: the file input on the page then is the
    one that stays (an upload into an input the rest of that run redraws could be lost)."""
    page.goto(f"{url}/compare", timeout=120_000)
    page.get_by_text("Compare a baseline with a fine-tuned model").wait_for(timeout=120_000)
    wait_idle(page)


def wait_idle(page, timeout: float = 120_000) -> None:
    """Wait until the page's script run has ended (Streamlit's running indicator is gone). 300 ms first: Streamlit
    shows a run's indicator only after a moment, so without it a run just asked for (or one that has drawn its
    first elements) may look idle."""
    page.wait_for_timeout(300)
    page.locator("[data-testid=stStatusWidgetRunningIcon]").wait_for(state="hidden", timeout=timeout)


@pytest.fixture(scope="module")
def browser_home(app_home, tmp_path_factory):
    """This module's own workspace: what its pages show depends on nothing earlier tests saved."""
    return fresh_workspace(app_home, tmp_path_factory.mktemp("browser_home"))


@pytest.fixture(scope="module")
def app_url(browser_home, shipped):
    yield from serve_app(browser_home)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


def test_upload_png_shows_both_models_and_an_overlay(app_url, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1500, "height": 1800})
    open_compare(page, app_url)
    # a first visit straight to a page's URL still goes through app.py's navigation
    nav = page.inner_text("[data-testid=stSidebarNav]")
    assert "Thresholds" in nav and "Explain" in nav and "app" not in nav.split()
    # before an image: each model's thresholds and held-out AUROC per label, and what that split was
    page.get_by_text("The two models at a glance").wait_for(timeout=120_000)
    page.wait_for_function("[...document.querySelectorAll('.gtitle')].some(t => t.textContent.includes("
                           "'Held-out AUROC per label'))", timeout=60_000)
    page.get_by_text("AUROC on the test split of").nth(1).wait_for(timeout=60_000)
    assert page.get_by_text("AUROC on the test split of").count() == 2
    page.locator("input[type=file]").first.set_input_files(str(FORMATS / "00000001_000.png"))
    page.get_by_text("feature cells").wait_for(timeout=240_000)
    body = body_with(page, "baseline:", "fine-tuned:", "threshold")
    # the overlays are images rendered by the page (input + one per model)
    page.wait_for_function("document.querySelectorAll('[data-testid=stImage] img').length >= 3", timeout=60_000)
    page.get_by_text("Download comparison panel (PNG)").wait_for(timeout=60_000)
    assert page.get_by_text("Download comparison panel (PNG)").count() == 1
    # a real film with the phantom-trained shipped models: the warning stands above the probabilities
    warning = page.locator("[data-testid=stAlertContentWarning]", has_text="trained only on synthetic phantoms")
    assert warning.count() == 2  # one per model
    assert "library model" in body or "train on real data" in body
    # the Monte-Carlo spread comes after the first answer, said so while it is computed, then how to read it
    page.get_by_text("sensitivity proxy, not a calibrated error bar").first.wait_for(timeout=240_000)
    assert page.get_by_text("Monte-Carlo dropout spread: coming").count() == 0
    wait_idle(page)   # the spread re-draws the chart: its place is read once the page has settled
    bars = page.locator("[data-testid=stPlotlyChart]", has_text="Probability per label").first
    bars.wait_for(timeout=60_000)
    assert warning.first.bounding_box()["y"] < bars.bounding_box()["y"]
    page.screenshot(path=str(tmp_path / "compare.png"), full_page=True)


def test_four_sessions_uploading_at_once_each_get_their_own_results(app_url, browser, browser_home, monkeypatch):
    """Four browser sessions upload four different images at the same moment; each page shows its own image's
    answer: the fine-tuned model's probability of the label its heatmap shows is that image's, as the predictor of
    the model the page picks by default gives it (in this module's own workspace: the shipped model)."""
    from cxrcore.data.imageio import read_image
    from cxrcore.predictor import Predictor
    from ui.common import checkpoint_choices

    monkeypatch.setenv("CXR_HOME", str(browser_home))   # the app server's workspace
    choices = checkpoint_choices(library=False)
    tuned = Predictor(next(path for name, path in choices.items() if name.startswith("finetuned")))
    images = sorted((browser_home / "datasets").glob("phantom-nih-*/images/*.png"))[:40:10]
    assert len(images) == 4
    preds = [tuned.predict(read_image(path), heatmaps=False) for path in images]
    contexts = [browser.new_context(viewport={"width": 1500, "height": 1800}) for _ in images]
    pages = [c.new_page() for c in contexts]
    for page in pages:
        open_compare(page, app_url)
    for page, path in zip(pages, images):   # four uploads in flight at once on one server
        page.locator("input[type=file]").first.set_input_files(str(path))
    for page, path, pred in zip(pages, images, preds):
        # the heatmap caption of the fine-tuned model: "fine-tuned: LABEL p=0.97 (threshold 0.58) · GradCAM"
        body = body_with(page, re.compile(r"fine-tuned: .+ p=[0-9.]+ \(threshold"), f"{path.name}: PNG",
                         timeout=300_000)
        shown = re.search(r"fine-tuned: (.+?) p=([0-9.]+) \(threshold", body)
        label, p = shown.group(1), shown.group(2)
        assert p == f"{pred.probs[pred.labels.index(label)]:.2f}", (path.name, label, p)   # this image's answer
        assert f"{path.name}: PNG" in body and "Traceback" not in body
        assert sum(f"{other.name}: PNG" in body for other in images) == 1   # nobody else's image
    for c in contexts:
        c.close()


def test_upload_of_a_phantom_has_no_phantom_warning(app_url, browser, browser_home):
    page = browser.new_page(viewport={"width": 1500, "height": 1800})
    open_compare(page, app_url)
    image = next(iter(sorted((browser_home / "datasets").glob("phantom-nih-*/images/*.png"))))
    page.locator("input[type=file]").first.set_input_files(str(image))
    page.get_by_text("feature cells").wait_for(timeout=240_000)
    # the image's provenance, read from its mark
    body = body_with(page, "synthetic phantom (cxrcore's generator)", "baseline:", "fine-tuned:")
    assert "trained only on synthetic phantoms" not in body


def test_dicom_upload_with_uncertainty(app_url, browser):
    page = browser.new_page(viewport={"width": 1500, "height": 1800})
    open_compare(page, app_url)
    page.locator("input[type=file]").first.set_input_files(
        str(FORMATS / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"))
    page.get_by_text("feature cells").wait_for(timeout=240_000)
    body = body_with(page, "DICOM, 1024×1024", "MONOCHROME2", "Monte-Carlo dropout", "baseline:", "fine-tuned:")
    assert "may not be a frontal chest radiograph" not in body  # a real chest X-ray passes the OOD guard


def test_two_views_of_one_study_are_combined(app_url, browser, tmp_path):
    """A second upload (e.g. the lateral) gives the study's probabilities, mean or max of the two views."""
    page = browser.new_page(viewport={"width": 1500, "height": 2200})
    open_compare(page, app_url)
    files = page.locator("input[type=file]")
    files.nth(0).set_input_files(str(FORMATS / "00000001_000.png"))
    page.get_by_text("feature cells").wait_for(timeout=240_000)
    files.nth(1).set_input_files(str(FORMATS / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"))
    page.get_by_text("The study: both views combined").wait_for(timeout=240_000)
    page.get_by_text("Study probability = the mean of the two views").wait_for(timeout=120_000)
    page.get_by_text("max", exact=True).click()
    page.get_by_text("Study probability = the max of the two views").wait_for(timeout=120_000)
    assert "Traceback" not in page.inner_text("body")
    page.screenshot(path=str(tmp_path / "compare-study.png"), full_page=True)


def test_bad_upload_shows_a_message_and_the_app_keeps_working(app_url, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    open_compare(page, app_url)
    broken = tmp_path / "broken.png"
    broken.write_bytes((FORMATS / "00000001_000.png").read_bytes()[:3000])
    page.locator("input[type=file]").first.set_input_files(str(broken))
    page.locator("[data-testid=stAlertContentError]").first.wait_for(timeout=120_000)
    assert "truncated" in page.inner_text("body").lower() or "corrupt" in page.inner_text("body").lower()
    assert "Traceback" not in page.inner_text("body")
    # the app keeps working: the home page still renders
    page.goto(app_url, timeout=120_000)
    page.get_by_text("Chest X-ray classifier workbench").wait_for(timeout=120_000)


def test_a_visit_through_a_proxy_gets_the_shared_server_defaults(app_url, browser):
    """The app listens on 127.0.0.1 without CXR_HOSTED; a visit carrying a reverse proxy's headers is treated
    as a shared server's (issue 19): Home says so, and the Dataset page offers no typed folder."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 1400},
                              extra_http_headers={"X-Forwarded-For": "10.1.2.3", "X-Forwarded-Proto": "https"})
    page = ctx.new_page()
    page.goto(app_url, timeout=120_000)
    page.get_by_text("This app is reached from another machine").wait_for(timeout=120_000)
    page.goto(f"{app_url}/dataset", timeout=120_000)
    page.get_by_test_id("stSelectbox").filter(has_text="Source").wait_for(timeout=120_000)
    wait_idle(page)
    _choose(page, "Source", "A folder on this machine…")
    page.get_by_text("Typed folders are off on this shared server").first.wait_for(timeout=120_000)
    ctx.close()
    # the same server, visited from this machine: one person's own tool, no warning
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    page.goto(app_url, timeout=120_000)
    page.get_by_text("Chest X-ray classifier workbench").wait_for(timeout=120_000)
    wait_idle(page)
    assert "reached from another machine" not in page.inner_text("body")
    page.close()


def test_training_page_launches_and_watches_a_job(app_url, browser, tmp_path):
    """The Training form in a real browser: a small job starts, the live view follows it to the end."""
    page = browser.new_page(viewport={"width": 1500, "height": 2200})
    page.goto(f"{app_url}/training", timeout=120_000)
    page.get_by_text("Launch a training job").wait_for(timeout=120_000)
    page.get_by_text("An architecture (timm, tv:, xrv:)").click()
    page.get_by_text("Output stride 16").wait_for(timeout=120_000)  # the rerun after the click has drawn the form
    wait_idle(page)  # ...and has ended: what is typed next is not redrawn under the typing
    # Values the user did not touch keep their defaults across that rerun (a form-widget pitfall, fixed).
    assert page.get_by_role("spinbutton", name="Batch size").input_value() == "32"
    page.get_by_role("textbox", name="Job name").fill("browser-job")
    page.get_by_role("spinbutton", name="Epochs", exact=True).fill("1")
    page.get_by_role("spinbutton", name="Max images (0 = all)").fill("40")
    page.get_by_text("Data: uncertainty policy, filters, split, image size").click()
    page.get_by_role("spinbutton", name="Image size (px)").fill("48")
    page.get_by_text("Start training").click()
    try:
        page.get_by_text("browser-job").first.wait_for(timeout=120_000)
    except Exception as exc:  # say what the page shows instead
        raise AssertionError("no job named browser-job started; the page shows:\n"
                             + page.inner_text("body")[:6000]) from exc
    page.locator("[data-testid=stAlertContentSuccess]").first.wait_for(timeout=60_000)
    assert "Traceback" not in page.inner_text("body")
    # The live view refreshes by itself until the job ends.
    page.locator("[data-testid=stAlertContentSuccess]", has_text="Checkpoint:").wait_for(timeout=300_000)
    body = page.inner_text("body")
    assert "succeeded" in body and "Best val mean AUROC" in body
    # training vs validation loss with the best checkpoint marked, and the history as CSV (drawn below the
    # success message, so waited for)
    page.get_by_text("best checkpoint: epoch 1, chosen on validation mean AUROC").wait_for(timeout=60_000)
    page.wait_for_function("[...document.querySelectorAll('.gtitle')].some(t => t.textContent.includes("
                           "'Training and validation loss'))", timeout=60_000)
    page.get_by_role("button", name="History as CSV").first.wait_for(timeout=60_000)
    page.screenshot(path=str(tmp_path / "training.png"), full_page=True)


# ------------------------------------------------------------------ the dataset through the model's eyes (issue 24)
def _open_dataset(page, url: str, source: str) -> None:
    """The Dataset page on ``source``, chosen once the first run (the default source's statistics) has ended: a
    choice made while that run still draws the page would be redrawn away."""
    page.goto(f"{url}/dataset", timeout=120_000)
    page.get_by_text("Download prevalence (CSV)").first.wait_for(timeout=120_000)
    wait_idle(page)
    _choose(page, "Source", source)
    body_with(page, "Layout:", "Label errors")
    wait_idle(page)


def _tab(page, name: str) -> None:
    """Open the tab ``name`` of the page's tabs and wait until the run it starts has ended."""
    try:
        page.get_by_role("tab", name=name).click(timeout=60_000)
    except Exception as exc:   # say what the page shows instead
        raise AssertionError(f"no tab {name!r}; the page shows:\n{page.inner_text('body')[-3000:]}") from exc
    wait_idle(page)


@pytest.fixture(scope="module")
def noisy_films(browser_home) -> Path:
    """200 NIH-style phantom films in the module's workspace, 5 % of three findings' labels flipped."""
    from cxrcore.data.phantom import generate
    from cxrcore.data.phantom.noise import add_label_noise

    data = generate(browser_home / "datasets" / "noisyfilms", n=200, domain="nih", seed=35, workers=1)
    add_label_noise(data, 0.05, seed=2, labels=["Effusion", "Infiltration", "Atelectasis"])
    return data


def test_index_a_phantom_from_the_page_find_similar_cases_and_review_suspected_label_errors(noisy_films, app_url,
                                                                                             browser, browser_home,
                                                                                             tmp_path):
    """Issue 24's "done when", in Chromium: a noised phantom (5 % of three findings' labels flipped) indexed by the
    baseline as a job started from the Dataset page; the map drawn from it; similar cases from it on Compare for an upload; the Dataset
    page's suspected label errors of it; a reviewer marks two (label wrong, label right); the downloaded relabel
    table holds them, the wrong one corrected; the dataset's own label table untouched."""
    import pandas as pd

    from cxrcore.jobs import JobStore

    data = noisy_films
    table_before = (data / "Data_Entry_2017.csv").read_bytes()
    page = browser.new_page(viewport={"width": 1500, "height": 2400})
    _open_dataset(page, app_url, "noisyfilms")
    _tab(page, "Embedding map")
    body_with(page, "No model has indexed this dataset yet")
    form = page.get_by_test_id("stForm").filter(has_text="Model whose embeddings index the films")
    box = form.get_by_test_id("stSelectbox")
    box.locator("input").click()
    page.get_by_role("option", name=re.compile("^baseline")).first.click()
    form.get_by_role("button", name="Index (a job)").click()
    body_with(page, "Started indexing job")
    store = JobStore(browser_home / "jobs.sqlite")
    deadline = time.time() + 300
    while time.time() < deadline and not (jobs := [j for j in store.list() if j.config.get("task") == "index"
                                                   and j.status == "succeeded"]):
        assert not any(j.status == "failed" for j in store.list()), [j.error for j in store.list()]
        time.sleep(0.5)
    assert jobs, "the index job did not succeed in 300 s"
    _open_dataset(page, app_url, "noisyfilms")                    # a new visit: the map from the new index
    _tab(page, "Embedding map")
    body_with(page, "t-SNE of")

    # Compare: the upload's nearest films of the indexed phantom
    open_compare(page, app_url)
    page.locator("input[type=file]").first.set_input_files(str(FORMATS / "00000001_000.png"))
    page.get_by_text("feature cells").first.wait_for(timeout=240_000)
    wait_idle(page)
    page.get_by_text("Similar cases from an indexed dataset").click()
    text = body_with(page, "noisyfilms (200 films)", re.compile(r"\*?\*?8\*?\*? · distance"))
    assert len(re.findall(r"distance \d\.\d{4} · labels:", text)) == 8

    # the Dataset page: suspected label errors, two verdicts, the export
    _open_dataset(page, app_url, "noisyfilms")
    _tab(page, "Label errors")
    page.get_by_role("button", name="Look for label errors").click()
    body_with(page, "suspected label errors among", "200", "0 of")
    wait_idle(page)
    radios = page.get_by_test_id("stRadio").filter(has_text="label wrong")
    radios.nth(0).get_by_text("label wrong", exact=True).click()
    wait_idle(page)
    radios.nth(1).get_by_text("label right", exact=True).click()
    wait_idle(page)
    body_with(page, "2 of", "reviewed")
    with page.expect_download() as got:
        page.get_by_role("button", name=re.compile("Download the relabel table \\(2 reviewed pairs")).click()
    path = tmp_path / "relabel.csv"
    got.value.save_as(path)
    table = pd.read_csv(path)
    assert sorted(table["verdict"]) == ["label right", "label wrong"]
    wrong = table[table["verdict"] == "label wrong"].iloc[0]
    assert wrong["corrected"] == 1 - wrong["given"]
    assert (data / "Data_Entry_2017.csv").read_bytes() == table_before
    page.screenshot(path=str(tmp_path / "label_errors.png"), full_page=True)


# ------------------------------------------------------------------ a library model (torchxrayvision)
# ------------------------------------------------------------------ compare with the prior study (issue 25)
def test_a_patients_two_studies_from_a_dataset_folder_are_registered_and_the_known_change_is_called(
        app_url, browser, browser_home, shipped, monkeypatch, tmp_path):
    """Issue 25's "done when", in Chromium: the Follow-up page on the built-in phantom pairs (their change known);
    a patient picked whose films show findings that came (new) or went (resolved), chosen by the baseline's own
    probabilities on the two films; the page shows the registered pair, the checkerboard, the subtraction and the
    heatmap change, and calls every known change of the patient as it is."""
    import pandas as pd

    from cxrcore.compare import load_image
    from cxrcore.demo import ensure_pairs
    from cxrcore.predictor import Predictor
    from cxrcore.prior.change import DEFAULT_CHANGE_THRESHOLD, call

    monkeypatch.setenv("CXR_HOME", str(browser_home))
    folder = ensure_pairs()                         # what the page generates on its first visit
    truth = pd.read_csv(folder / "pairs.csv")
    model = Predictor(shipped["baseline"])
    tau = dict(zip(model.labels, model.card.change_threshold_list(DEFAULT_CHANGE_THRESHOLD)))
    patient, changes = None, {}
    for pid, rows in truth.groupby("patient", sort=True):
        changed = rows[rows["change"] != "unchanged"]
        if changed.empty or not set(changed["change"]) <= {"new", "resolved"}:
            continue
        p, c = (model.predict(load_image(folder / rows[k].iloc[0])[0], heatmaps=False).probs
                for k in ("prior", "current"))
        j = [model.labels.index(x) for x in rows["label"]]
        calls = [call(p[i], c[i], model.thresholds[i], tau[model.labels[i]]) for i in j]
        if calls == list(rows["change"]):            # every label of the pair called as it is
            patient, changes = pid, dict(zip(changed["label"], changed["change"]))
            break
    assert patient is not None, "no built-in pair whose every change the baseline calls right"

    page = browser.new_page(viewport={"width": 1500, "height": 2600})
    page.goto(f"{app_url}/followup", timeout=120_000)
    body_with(page, "Choose a patient", timeout=240_000)
    wait_idle(page)
    from playwright.sync_api import expect

    box = page.get_by_test_id("stSelectbox").filter(has_text="Patient (")
    box.locator("input").click()
    box.locator("input").fill(str(patient))
    page.get_by_role("option", name=f"{patient} — 2 studies", exact=True).click()
    expect(box.locator("input")).to_have_value(f"{patient} — 2 studies", timeout=60_000)
    wait_idle(page, timeout=240_000)
    known = "; ".join(f"{x}: {c}" for x, c in changes.items())
    text = body_with(page, f"(the folder's pairs.csv): {known}", "Prior, registered onto the current film",
                     "Checkerboard of the two", "Subtraction: current − registered prior", "Heatmap change for",
                     "Registration: NCC over the lung fields", timeout=240_000)
    line = next(s for s in text.splitlines() if s.startswith("Called:"))
    for label, change in changes.items():
        assert f"{label}: {change} (" in line, (label, change, line)
    assert len(re.findall(r": (new|resolved|worse|better) \(", line)) == len(changes), line
    page.get_by_text("Subtraction: current − registered prior").scroll_into_view_if_needed()   # images load lazily
    loaded = "() => [...document.images].filter(i => i.complete && i.naturalWidth > 100).length"
    try:   # prior, registered prior, current, checkerboard, subtraction, heatmap change
        page.wait_for_function(f"() => ({loaded})() >= 6", timeout=60_000)
    except Exception as exc:
        raise AssertionError(f"{page.evaluate(loaded)} films drawn, not 6") from exc
    assert "could not be aligned" not in text
    page.screenshot(path=str(tmp_path / "followup.png"), full_page=True)


@pytest.fixture(scope="module")
def xrv_app_url(app_home, shipped, tmp_path_factory):
    """A second app server whose torchxrayvision cache (CXR_XRV_CACHE_DIR) holds a planted DenseNet file,
    made as the library makes its own; its own workspace (the built-in phantoms linked in); offline."""
    from library_files import plant_densenet

    root = tmp_path_factory.mktemp("xrv_app")
    home = root / "home"
    home.mkdir()
    (home / "datasets").symlink_to(app_home / "datasets", target_is_directory=True)
    plant_densenet(root / "xrv-cache")
    with open(root / "server.log", "wb") as log:
        for url in serve_app(home, log, CXR_XRV_CACHE_DIR=str(root / "xrv-cache"), CXR_OFFLINE="1"):
            yield url, root / "server.log"


def _choose(page, label: str, option: str) -> str:
    """Pick ``option`` in the Streamlit selectbox labelled ``label`` (type to filter, then click it) and wait
    until the script run the choice starts has ended (an upload into the page while that run redraws it could be
    lost: twice a library-model comparison, uploaded right after the choice, never came); the option's text as
    shown."""
    from playwright.sync_api import expect

    box = page.get_by_test_id("stSelectbox").filter(has_text=label)
    box.locator("input").click()
    box.locator("input").fill(option.split(" ")[0])
    choice = page.get_by_role("option", name=option).first
    shown = choice.inner_text(timeout=120_000)   # a loaded machine draws the list slowly
    choice.click()
    expect(box.locator("input")).to_have_value(shown, timeout=60_000)   # the box shows the choice
    wait_idle(page)
    return shown


def test_compare_with_a_library_model_on_one_side(xrv_app_url, browser, tmp_path):
    url, log = xrv_app_url
    page = browser.new_page(viewport={"width": 1500, "height": 2000})
    open_compare(page, url)
    assert "needs weights" not in _choose(page, "Baseline model", "xrv:densenet121-res224-all (library)")
    page.locator("input[type=file]").first.set_input_files(str(FORMATS / "00000001_000.png"))
    body = body_with(page, "feature cells", "baseline:", "fine-tuned:", "xrv:densenet121-res224-all", "torchxrayvision",
                     timeout=300_000, log=log)
    assert "Traceback" not in body  # and the baseline saw the library model
    page.wait_for_function("document.querySelectorAll('[data-testid=stImage] img').length >= 3", timeout=60_000)
    # the library model's card next to its predictions
    page.get_by_text("Model cards").click()
    page.get_by_text("library default (torchxrayvision's op_threshs)").wait_for(timeout=60_000)
    body = page.inner_text("body")
    assert "weights densenet121-res224-all" in body and "[-1024, 1024]" in body and "Apache-2.0" in body
    # a weight set whose file is not in the cache is marked, and choosing it says what to do (offline)
    assert "needs weights" in _choose(page, "Fine-tuned model", "xrv:densenet121-res224-nih (library)")
    page.get_by_text("CXR_XRV_CACHE_DIR moves that folder").wait_for(timeout=120_000)
    assert "nih-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt" in page.inner_text("body")
    page.screenshot(path=str(tmp_path / "compare-xrv.png"), full_page=True)


# ------------------------------------------------------------------ Compare -> Explain with a local LLM
def test_compare_then_explain_a_hard_case_with_a_local_llm(browser_home, shipped, browser, tmp_path):
    """An upload on Compare, then Explain with the ground truth set so that both models are wrong (a hard
    case): the LLM (the local stub, structured output) gives a verdict badge, a box table and the text;
    the server's log (the openai client logging at debug level) never holds the key."""
    from llm_stub import StubLLM

    key = "sk-test-secret-123456"
    with StubLLM(key, mode="review") as stub, open(tmp_path / "server.log", "wb") as log:
        server = serve_app(browser_home, log, OPENAI_API_KEY=key, OPENAI_BASE_URL=stub.base_url, OPENAI_LOG="debug")
        url = next(server)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 2400})
            open_compare(page, url)
            page.locator("input[type=file]").first.set_input_files(str(FORMATS / "00000001_000.png"))
            page.get_by_text("feature cells").wait_for(timeout=240_000)
            page.get_by_text("Explain this comparison").click()
            page.get_by_text("Explain a comparison", exact=True).wait_for(timeout=120_000)
            _choose(page, "Label to explain", "Cardiomegaly")
            page.get_by_text("Case type:").first.wait_for(timeout=60_000)
            # both shipped models call Cardiomegaly absent on this film: "present" makes it a hard case
            page.get_by_test_id("stRadio").filter(has_text="Ground truth of Cardiomegaly").get_by_text(
                "present", exact=True).click()
            page.get_by_text("Case type: hard", exact=True).wait_for(timeout=60_000)
            page.get_by_role("button", name="Explain with the LLM").click()
            page.get_by_text("Verdict", exact=True).wait_for(timeout=120_000)
            page.get_by_text("Download this explanation (JSON)").wait_for(timeout=60_000)  # the last element drawn
            body = page.inner_text("body")
            assert "Hard case for Cardiomegaly" in body and "Validated against the schema" in body
            assert any(v in body for v in ("IMPROVED", "WORSE", "NO CHANGE"))
            assert page.locator("[data-testid=stMarkdown] span", has_text="NO CHANGE").count() + \
                page.locator("[data-testid=stMarkdown] span", has_text="IMPROVED").count() + \
                page.locator("[data-testid=stMarkdown] span", has_text="WORSE").count() >= 1  # the badge
            table = page.locator("[data-testid=stDataFrame]").last
            table.wait_for(timeout=60_000)
            # the box table sits beside the text (to its right), not below it
            text = page.get_by_text("Hard case for Cardiomegaly").first.bounding_box()
            assert table.bounding_box()["x"] > text["x"] + text["width"] / 2
            assert "Traceback" not in body and key not in body
            page.screenshot(path=str(tmp_path / "explain.png"), full_page=True)
            assert len(stub.requests) == 1 and sent_case(stub.requests[0]["body"]) == "hard"
        finally:
            next(server, None)
    assert key not in (tmp_path / "server.log").read_text(errors="replace")
    assert "HTTP Response: POST 200" in (tmp_path / "server.log").read_text(errors="replace")  # the client did log


def sent_case(body: dict) -> str:
    from llm_stub import sent_facts

    return sent_facts(body)["case"]["type"]
