"""Honest about what a model has seen: the phantom warning on every surface for a real film, none for a
phantom; how to read a Monte-Carlo dropout spread; what each card says its model was trained on."""
from __future__ import annotations

import base64
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import FORMATS, REPO, cxr_here
from cxrcore.checkpoint import Card, read_card, save_checkpoint
from cxrcore.compare import compare
from cxrcore.data.imageio import read_image
from cxrcore.explain.llm import build_facts, template_summary
from cxrcore.explain.visual import comparison_panel
from cxrcore.predictor import Predictor

REAL = FORMATS / "00000001_000.png"
DICOM = FORMATS / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"


@pytest.fixture(scope="module")
def phantom_png(app_home):
    return sorted((app_home / "datasets").glob("phantom-nih-*/images/*.png"))[0]


@pytest.fixture(scope="module")
def phantom_jpg(app_home):
    return sorted((app_home / "datasets").glob("phantom-chexpert-*/**/*.jpg"))[0]


@pytest.fixture(scope="module")
def predictors(shipped):
    return {"baseline": Predictor(shipped["baseline"]), "fine-tuned": Predictor(shipped["finetuned"])}


def test_shipped_cards_say_phantom(shipped):
    for path in shipped.values():
        card = read_card(path)
        assert card.training_kind() == "phantom"


def test_phantom_images_carry_the_mark_real_films_do_not(phantom_png, phantom_jpg):
    assert read_image(phantom_png).synthetic and read_image(phantom_jpg).synthetic
    for f in (REAL, DICOM, FORMATS / "nih_rgb_1036x885.jpg"):
        assert not read_image(f).synthetic


def test_real_film_warns_phantom_does_not(predictors, phantom_png, phantom_jpg):
    for p in predictors.values():
        for real in (REAL, DICOM):
            pred = p.predict(real, heatmaps=False)
            assert [w.code for w in pred.warnings] == ["phantom_model_real_image"]
            text = pred.warnings[0].text
            assert "synthetic phantoms" in text and "library model" in text and "xrv:densenet121-res224-all" in text
            assert "needs weights" in text or "ready" in text
        # an array of unknown origin is treated as a real image (the cautious side)
        assert pred.to_dict()["warning_codes"] == ["phantom_model_real_image"]
        for ph in (phantom_png, phantom_jpg):
            assert p.predict(ph, heatmaps=False).warnings == []
        assert p.predict(read_image(phantom_png).pixels, heatmaps=False).warnings  # marks live in files only


def test_a_real_data_model_warns_on_a_phantom(tmp_path, shipped, phantom_png):
    card = read_card(shipped["baseline"])
    state = Predictor(shipped["baseline"]).model.state_dict()
    card.trained_on = {"kind": "real", "datasets": ["NIH ChestX-ray14: images_001"], "summary": "real radiographs (NIH)"}
    save_checkpoint(tmp_path / "real", state, card)
    p = Predictor(tmp_path / "real")
    assert p.predict(REAL, heatmaps=False).warnings == []
    assert [w.code for w in p.predict(phantom_png, heatmaps=False).warnings] == ["real_model_phantom_image"]


def test_mc_note_injected_vs_trained_dropout(tmp_path, shipped):
    pred = Predictor(shipped["baseline"]).predict(REAL, heatmaps=False, mc_samples=4)
    assert pred.mc["kind"] == "injected" and "sensitivity proxy" in pred.mc["note"]
    # a model with trained dropout (timm's classifier head dropout): its own layers give the spread
    from cxrcore.models.registry import build_model, spec_for

    model = build_model("regnetx_002", 3, "none", {"drop_rate": 0.3})
    card = Card(labels=["Atelectasis", "Edema", "Effusion"], model=spec_for("regnetx_002", "none", {"drop_rate": 0.3}),
                preprocess={"size": 64}, trained_on={"kind": "phantom", "datasets": [], "summary": "test"})
    save_checkpoint(tmp_path / "dropout", model.state_dict(), card)
    pred = Predictor(tmp_path / "dropout").predict(REAL, heatmaps=False, mc_samples=4)
    assert pred.mc["kind"] == "trained" and pred.mc["dropout_p"] == 0
    assert "own dropout layers" in pred.mc["note"] and "not a calibrated error bar" in pred.mc["note"]


def test_panel_png_carries_the_warning(predictors, phantom_png):
    def panel_for(path):
        image = read_image(path)
        preds = {n: p.predict(image) for n, p in predictors.items()}
        return comparison_panel(image.pixels, preds, "Edema")

    real, phantom = panel_for(REAL), panel_for(phantom_png)
    banner = real[: real.shape[0] - phantom.shape[0]]
    assert banner.shape[0] > 20  # two warning lines on top of the real film's panel, none on the phantom's
    red = (banner[..., 0] > 140) & (banner[..., 1] < 60) & (banner[..., 2] < 60)
    assert red.mean() > 0.5
    assert not ((phantom[:10, :, 0] > 140) & (phantom[:10, :, 1] < 60)).any()


def test_llm_facts_and_written_summary_carry_the_warning(predictors, phantom_png):
    raw = REAL.read_bytes()
    comparison = compare(read_image(raw, REAL.name), predictors, REAL.name, None, raw=raw, mc_samples=3)
    facts = build_facts(comparison.for_label("Edema"), "Edema")
    assert len(facts["warnings"]) == 2 and all("synthetic phantoms" in w for w in facts["warnings"])
    assert all("sensitivity proxy" in m["uncertainty_note"] for m in facts["models"].values())
    assert template_summary(facts).split("\n")[1].startswith("WARNING: ")
    raw = phantom_png.read_bytes()
    comparison = compare(read_image(raw, phantom_png.name), predictors, phantom_png.name, None, raw=raw)
    assert "warnings" not in build_facts(comparison.for_label("Edema"), "Edema")


def _cxr(*args):
    return subprocess.run([sys.executable, "-m", "cxrcore.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600)


def test_cli_predict_json_and_text_warnings(shipped, phantom_png, capsys):
    r = _cxr("predict", str(REAL), "--checkpoint", str(shipped["finetuned"]), "--json", "--mc-samples", "3")
    assert r.returncode == 0, r.stderr   # the entry point as a process; the other runs through cxr's main here
    out = json.loads(r.stdout)
    assert out["warning_codes"] == ["phantom_model_real_image"] and "synthetic phantoms" in out["warnings"][0]
    assert "phantom" in out["trained_on"] and out["mc"]["kind"] == "injected"
    code, text, err = cxr_here(capsys, "predict", REAL, "--checkpoint", shipped["baseline"], "--mc-samples", "3")
    assert code == 0 and text.startswith("WARNING: ") and "sensitivity proxy" in text, err
    code, text, err = cxr_here(capsys, "predict", phantom_png, "--checkpoint", shipped["baseline"], "--json")
    assert json.loads(text)["warnings"] == []
    code, text, err = cxr_here(capsys, "predict", REAL, "--checkpoint", shipped["baseline"], "--mc-samples", "1000")
    assert code == 2 and err.startswith("error: --mc-samples")


def test_api_response_warnings(shipped, phantom_png):
    import threading
    import urllib.request

    from cxrcore.api import Service, make_server

    server = make_server(Service([shipped["baseline"]]), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]

    def post(data: bytes, name: str, **extra):
        body = json.dumps({"image": base64.b64encode(data).decode(), "name": name, **extra}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/predict", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        return json.loads(urllib.request.urlopen(req, timeout=300).read())

    try:
        out = post(REAL.read_bytes(), REAL.name, mc_samples=3)
        assert out["warning_codes"] == ["phantom_model_real_image"] and "library model" in out["warnings"][0]
        assert "sensitivity proxy" in out["uncertainty"]["note"] and out["uncertainty"]["kind"] == "injected"
        assert post(phantom_png.read_bytes(), phantom_png.name)["warnings"] == []
        page = io.BytesIO()  # a blank white page: not a chest film, and not a phantom either
        Image.fromarray(np.full((700, 500), 250, np.uint8)).save(page, format="PNG")
        out = post(page.getvalue(), "page.png")
        assert out["warning_codes"] == ["phantom_model_real_image", "not_chest_xray"]
        assert len(out["warnings"]) == 2
    finally:
        server.shutdown()
        server.server_close()


def test_ood_limits_fitted_from_real_films_admit_them(app_home):
    from cxrcore.explain.ood import check_image, check_stats, fit_thresholds, image_stats

    real = [image_stats(read_image(p).pixels) for p in sorted((FORMATS.parent / "nih-sample" / "images").glob("*.png"))]
    limits = fit_thresholds(real[:100], k=0.0)
    assert not any(check_stats(s, limits) for s in real[:100])  # k = 0: the extremes themselves pass
    assert limits.min_std <= min(s["std"] for s in real[:100]) and limits.max_edge_density >= max(
        s["edge_density"] for s in real[:100])
    assert fit_thresholds(real, k=1.0).min_symmetry < fit_thresholds(real, k=0.0).min_symmetry
    # a marked phantom is a chest image by provenance: the guard does not call it out of distribution
    phantom = read_image(sorted((app_home / "datasets").glob("phantom-chexpert-*/**/*.jpg"))[0])
    assert phantom.synthetic and not check_image(phantom).is_suspect
