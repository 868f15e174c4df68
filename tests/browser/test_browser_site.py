"""End to end (issue 23's "done when"): in headless Chromium, a site profile is fitted from the Thresholds page on 300
labelled NIH-style phantom films (the fine-tuned model saw CheXpert-style ones); the page reopens on the model that
holds it at that site, its sliders at the site's thresholds; Compare shows the fine-tuned model's call at the site's
threshold and says which profile gave it; the card holds the profile and the shipped model is unchanged."""
from __future__ import annotations

import os
import re

import pytest

from conftest import FORMATS, fresh_workspace
from test_browser import CHROMIUM, body_with, browser, open_compare, serve_app, wait_idle  # noqa: F401 (browser)

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed")]
SAMPLE = "northfilms"   # the site sample folder (a hyphen would defeat the selectbox filter typed below)
LABEL = "Pleural Effusion"


@pytest.fixture(scope="module")
def home(app_home, tmp_path_factory):
    from cxrcore.data.phantom import generate

    home = fresh_workspace(app_home, tmp_path_factory.mktemp("site_home"))
    generate(home / "datasets" / SAMPLE, n=300, domain="nih", seed=11)   # the site's labelled sample
    return home


@pytest.fixture(scope="module")
def served(home, shipped, tmp_path_factory):
    log = tmp_path_factory.mktemp("site_log") / "server.log"
    with open(log, "wb") as out:
        for url in serve_app(home, out):
            yield url, log


def _choose(page, label: str, option: str, within=None) -> None:
    """Pick ``option`` in the selectbox labelled ``label`` (of ``within``, e.g. a form; default the page) and wait
    until the run it starts has ended."""
    from playwright.sync_api import expect

    box = (within or page).get_by_test_id("stSelectbox").filter(has_text=label)
    choice = page.get_by_role("option", name=option).first
    # Seen in full runs (and, for a while, alone): the list opened by the typing closed again at once, the box
    # keeping the typed text, so no option was ever drawn. The list is opened again until the option shows.
    for attempt in range(4):
        box.locator("input").click()
        box.locator("input").fill(option)   # the whole text: its option alone is left, the one Enter takes
        try:
            # the options are the page's own (no server round trip): drawn within a second, unless the list closed
            shown = choice.inner_text(timeout=10_000 if attempt < 3 else 120_000)
            break
        except Exception:  # noqa: BLE001 - the list closed: press Escape, open it again
            print(f"_choose({label!r}, {option!r}): attempt {attempt} found no option", flush=True)
            if attempt == 3:
                raise
            box.locator("input").press("Escape")
            page.wait_for_timeout(500)
    # Enter takes the focused (first) option of the filtered list: clicking it waited for the option to hold still,
    # and in run 26 the list was redrawn under the pointer for 30 s ("element is not stable ... detached")
    box.locator("input").press("Enter")
    expect(box.locator("input")).to_have_value(shown, timeout=60_000)
    wait_idle(page)


def test_a_site_profile_fitted_on_the_page_gives_the_sites_calls_on_thresholds_and_compare(served, home, shipped,
                                                                                          browser, tmp_path):
    from cxrcore.checkpoint import read_card

    url, log = served
    shipped_sha = read_card(shipped["finetuned"]).sha256()
    page = browser.new_page(viewport={"width": 1500, "height": 2200})
    page.goto(f"{url}/thresholds", timeout=120_000)
    page.get_by_text("Per-label decision thresholds").wait_for(timeout=120_000)
    wait_idle(page)
    page.get_by_text("Fit a site profile on a labelled sample of the site's films").click()
    form = page.get_by_test_id("stForm")
    form.get_by_label("Site name").fill("north/../x")
    _choose(page, "Labelled sample (dataset)", SAMPLE, within=form)
    boot = form.get_by_label("Bootstrap replicates")
    boot.fill("40")
    boot.press("Tab")
    form.get_by_role("button", name="Fit and save the site profile").click()
    body_with(page, "A site's name is 1 to 64 letters", log=log)             # first with a name it refuses
    assert not (home / "checkpoints" / "finetuned").exists()                 # nothing saved
    form.get_by_label("Site name").fill("north")
    form.get_by_role("button", name="Fit and save the site profile").click()
    body = body_with(page, "Site profile north fitted on", f"{SAMPLE} (all, 300 images)", "At site north",
                     timeout=300_000, log=log)
    assert "Traceback" not in body
    # the card of the workspace's copy holds the profile; the shipped model is as it was
    copy = home / "checkpoints" / "finetuned"
    site = read_card(copy).sites["north"]
    assert site["n"] == 300 and site["labels"][LABEL]["fitted"]
    assert read_card(shipped["finetuned"]).sha256() == shipped_sha
    t = site["labels"][LABEL]["threshold"]
    # the page reopened on the copy at the site: the label's slider stands at the site's threshold
    slider = page.get_by_test_id("stSlider").filter(has_text=LABEL)
    assert abs(float(slider.get_by_test_id("stSliderThumbValue").inner_text()) - t) <= 0.006
    assert page.get_by_role("button", name="Save thresholds to site profile north").count() == 1

    open_compare(page, url)
    _choose(page, "Fine-tuned model", "finetuned (your thresholds)")
    _choose(page, "Site profile", "north")
    page.locator("input[type=file]").first.set_input_files(str(FORMATS / "00000001_000.png"))
    body_with(page, "used at site north", "feature cells", timeout=240_000, log=log)
    _choose(page, "Heatmap for label", "Effusion")
    text = body_with(page, re.compile(r"fine-tuned: (Pleural )?Effusion p=\d\.\d\d \(threshold"), log=log)
    shown = float(re.search(r"fine-tuned: (?:Pleural )?Effusion p=\d\.\d\d \(threshold (\d\.\d\d)\)", text).group(1))
    assert shown == pytest.approx(t, abs=0.005)   # the site's threshold, not the card's
    own = read_card(shipped["finetuned"]).thresholds[LABEL]
    assert abs(own - t) >= 0.02, (own, t)   # the site moved it: the call shown is the site's, not the card's
    page.screenshot(path=str(tmp_path / "site.png"), full_page=True)
