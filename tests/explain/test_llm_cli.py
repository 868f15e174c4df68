"""LLM explanation against a local OpenAI-compatible stub on 127.0.0.1, and the `cxr` command."""
from __future__ import annotations

import base64
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cxrcore.compare import compare
from cxrcore.data.imageio import LoadedImage, read_image
from cxrcore.errors import LLMError
from cxrcore.explain.cases import classify_case, truth_for
from cxrcore.explain.llm import LLMConfig, anatomical_position, build_facts, template_summary
from cxrcore.explain.review import review_events
from cxrcore.explain.boxes import Box
from cxrcore.explain.visual import comparison_panel, png_bytes
from cxrcore.predictor import Predictor

from conftest import FORMATS, REPO, cxr_here
from llm_stub import StubLLM

KEY = "sk-test-secret-123456"


@pytest.fixture(scope="module")
def comparison(shipped):
    image = read_image(FORMATS / "00000001_000.png")
    return compare(image, {"baseline": Predictor(shipped["baseline"]), "fine-tuned": Predictor(shipped["finetuned"])},
                   "00000001_000.png", truth=["Cardiomegaly"])


def _panel_and_facts(comparison, label="Cardiomegaly"):
    preds = comparison.for_label(label)
    panel = png_bytes(comparison_panel(comparison.image.pixels, preds, label, comparison.truth))
    return panel, build_facts(preds, label, classify_case(preds, label, truth_for(comparison.truth, label)))


def test_comparison_checks_the_image_is_a_chest_radiograph(comparison, shipped):
    assert comparison.ood is not None and not comparison.ood.is_suspect
    page = np.full((600, 450), 0.97, np.float32)  # a white document page with lines of text
    page[60:540:24, 40:410] = 0.05
    doc = compare(LoadedImage(page, "PNG", 8, page.shape), {"baseline": Predictor(shipped["baseline"])}, "scan.png")
    assert doc.ood.is_suspect and doc.ood.reasons


def test_facts_and_template(comparison):
    panel, facts = _panel_and_facts(comparison)
    assert Image.open(io.BytesIO(panel)).size[0] > 3 * 200  # three tiles side by side
    assert set(facts["models"]) == {"baseline", "fine-tuned"}
    assert facts["case"]["type"] in {"easy", "average", "hard"} and facts["case"]["basis"] == "ground truth"
    assert facts["models"]["fine-tuned"]["focus"]["label"] == "Cardiomegaly"
    text = template_summary(facts)
    assert "Cardiomegaly" in text and "not a diagnosis" in text
    assert text == template_summary(facts)  # deterministic
    assert anatomical_position(Box(0.05, 0.7, 0.2, 0.2, 1)) == "lower zone, right"  # image left = patient right
    assert anatomical_position(Box(0.7, 0.05, 0.2, 0.2, 1)) == "upper zone, left"


def _ask(panel: bytes, facts: dict, config: LLMConfig, prompt: str = "Review the comparison.") -> list:
    """Every event of one review request (the path the Explain page and `cxr explain` take)."""
    return list(review_events(panel, facts, prompt, config))


def test_stream_from_local_stub_carries_image_and_facts(comparison):
    panel, facts = _panel_and_facts(comparison)
    with StubLLM(KEY, mode="review") as stub:
        events = _ask(panel, facts, LLMConfig(api_key=KEY, base_url=stub.base_url, model="stub-vl"))
    done = events[-1]
    assert done.kind == "done" and done.outcome.valid and done.outcome.mode == "structured"
    texts = [e.text for e in events if e.kind == "text"]
    assert len(texts) > 1 and texts[-1] == done.outcome.review.explanation  # the explanation, as it streamed
    assert json.loads(done.outcome.raw_text)["explanation"] == texts[-1]
    req = stub.requests[0]
    assert req["path"].endswith("/chat/completions") and req["body"]["stream"] is True
    assert req["body"]["model"] == "stub-vl" and req["body"]["messages"][0]["content"] == "Review the comparison."
    content = req["body"]["messages"][1]["content"]
    image_part = next(c for c in content if c["type"] == "image_url")["image_url"]["url"]
    assert base64.b64decode(image_part.split(",", 1)[1]) == panel
    text_part = next(c for c in content if c["type"] == "text")["text"]
    sent = json.loads(text_part.split("\n", 1)[1])
    assert sent == json.loads(json.dumps(facts))


@pytest.mark.parametrize("mode,match", [("401", "rejected the API key"), ("garbage", "not a chat completion|no text")])
def test_llm_errors_are_clear_and_never_show_the_key(comparison, mode, match):
    panel, facts = _panel_and_facts(comparison)
    with StubLLM(KEY, mode=mode) as stub:
        with pytest.raises(LLMError, match=match) as err:
            _ask(panel, facts, LLMConfig(api_key=KEY, base_url=stub.base_url))
    assert KEY not in str(err.value) and "sk-" not in str(err.value)


def test_llm_down_slow_and_unconfigured(comparison):
    panel, facts = _panel_and_facts(comparison)
    with pytest.raises(LLMError, match="Could not connect"):
        _ask(panel, facts, LLMConfig(api_key=KEY, base_url="http://127.0.0.1:9/v1"))
    with StubLLM(KEY, mode="slow") as stub:
        with pytest.raises(LLMError, match="did not answer"):
            _ask(panel, facts, LLMConfig(api_key=KEY, base_url=stub.base_url, timeout=1))
    with pytest.raises(LLMError, match="OPENAI_API_KEY"):
        _ask(panel, facts, LLMConfig(api_key=None))
    assert KEY not in repr(LLMConfig(api_key=KEY))


def _cxr(*args, env=None):
    return subprocess.run([sys.executable, "-m", "cxrcore.cli", *args], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=600)


# `cxr` as a process (``python -m cxrcore.cli``) twice: a success (exit 0, the JSON on stdout) and an error (exit 2,
# one line, no traceback). The other checks run its ``main`` in this process (conftest.cxr_here): the same code
# from the parsed arguments on, without a Python start and a torch import each.
def test_cli_predict_json_on_a_real_image(shipped, tmp_path, capsys):
    r = _cxr("predict", str(FORMATS / "00000001_000.png"), "--checkpoint", str(shipped["finetuned"]), "--json",
             "--panel", str(tmp_path / "panel.png"))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert len(out["probabilities"]) == 14 and out["cam_grid"][0] >= 8
    assert Image.open(tmp_path / "panel.png").size[0] > 200
    code, out, err = cxr_here(capsys, "predict", FORMATS / "00000001_000.png", "--checkpoint", shipped["baseline"])
    assert code == 0 and "Cardiomegaly" in out, err


def test_cli_errors_exit_2_with_a_message(shipped, tmp_path, capsys):
    bad = tmp_path / "note.png"
    bad.write_text("not an image")
    r = _cxr("predict", str(bad), "--checkpoint", str(shipped["baseline"]))
    assert r.returncode == 2 and "error:" in r.stderr and "Traceback" not in r.stderr
    # in this process an exception other than the CLI's own errors would propagate out of main and fail the test
    code, _, err = cxr_here(capsys, "predict", FORMATS / "00000001_000.png", "--checkpoint", tmp_path)
    assert code == 2 and "not a checkpoint" in err
    code, _, err = cxr_here(capsys, "phantom", "--out", tmp_path / "p", "--n", "0")
    assert code == 2 and err.startswith("error:") and "Traceback" not in err


def test_cli_phantom_then_train_then_predict(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    code, _, err = cxr_here(capsys, "phantom", "--out", tmp_path / "ph", "--n", "80", "--domain", "nih", "--size", "128",
                            "--workers", "1")  # rendered here (its worker pool: test_phantom.py)
    assert code == 0, err
    # the default --workers 2: its 80 images cached by a pool of processes (cxrcore.data.cache)
    code, out, err = cxr_here(capsys, "train", "--data", tmp_path / "ph", "--labels", "nih14", "--epochs", "1",
                              "--image-size", "64", "--batch-size", "16", "--out", tmp_path / "run")
    assert code == 0, err
    assert "val mean AUROC" in out
    card = json.loads((tmp_path / "run" / "checkpoint" / "card.json").read_text())
    assert card["labels"][:2] == ["Atelectasis", "Cardiomegaly"] and card["data"]["format"] == "nih"
    assert card["preprocess"]["size"] == 64 and len(card["thresholds"]) == 14
    assert card["data"]["fingerprint"] and card["training"]["config"]["epochs"] == 1
    events = [json.loads(x) for x in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert {"start", "step", "epoch", "checkpoint", "done"} <= {e["type"] for e in events}
    img = next((tmp_path / "ph" / "images").iterdir())
    code, out, err = cxr_here(capsys, "predict", img, "--checkpoint", tmp_path / "run", "--json")
    assert code == 0 and len(json.loads(out)["probabilities"]) == 14, err
    # a run folder that exists is refused before anything starts
    code, _, err = cxr_here(capsys, "train", "--data", tmp_path / "ph", "--out", tmp_path / "run")
    assert code == 2 and "already exists" in err


def test_cli_stats_and_cache_on_the_real_sample(tmp_path, capsys, monkeypatch):
    from conftest import NIH_SAMPLE

    monkeypatch.setenv("CXR_HOME", str(tmp_path))
    code, out, err = cxr_here(capsys, "stats", NIH_SAMPLE, "--json")
    assert code == 0, err
    out = json.loads(out)
    assert out["summary"]["images"] == 250 and out["summary"]["patients"] == 172
    prev = {row["label"]: row for row in out["prevalence"]}
    assert prev["Pneumonia"]["images_positive"] == 141 and prev["Hernia"]["images_positive"] == 0
    code, out, err = cxr_here(capsys, "cache", NIH_SAMPLE, "--size", "48", "--workers", "1")
    assert code == 0 and "cache of 250 images at 48 px" in out, err
    assert len(list((tmp_path / "cache").glob("*/images.u8"))) == 1
    code, _, err = cxr_here(capsys, "stats", tmp_path / "missing")
    assert code == 2 and "does not exist" in err
