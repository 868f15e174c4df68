"""Scoring on ONNX Runtime (cxrcore/runtime.py, `cxr score --runtime onnx`): the exported network gives PyTorch's
probabilities within 1e-4 for the shipped models, on a real film and phantom films (torchxrayvision's DenseNet-121:
bench/score.py measures the same on phantom films; its export takes ~20 s, too long for the suite); the export is
kept under the card's digest and reused; the archive's table is the same either way; the CLI says which runtime
ran."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import FORMATS, cxr_here

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def onnx_home(tmp_path_factory):
    """One workspace for the module: each model is exported once (the first test that needs it), then reused."""
    return tmp_path_factory.mktemp("onnx_home")


@pytest.fixture
def home(onnx_home, monkeypatch):
    monkeypatch.setenv("CXR_HOME", str(onnx_home))
    return onnx_home


@pytest.fixture(scope="module")
def films(app_home):
    """Real squared films: the NIH PNG of tests/data and 30 phantom films."""
    from cxrcore.data.imageio import read_image

    paths = [FORMATS / "00000001_000.png"] + sorted((app_home / "datasets").glob("phantom-nih-*/images/*.png"))[:30]
    return [read_image(p) for p in paths]


@pytest.mark.parametrize("which", ["finetuned", "baseline"])
def test_onnx_runtime_gives_pytorchs_probabilities_within_1e4(which, films, shipped, home):
    from cxrcore.predictor import Predictor
    from cxrcore.runtime import OnnxScorer

    predictor = Predictor(shipped[which])
    squares = np.stack([predictor.prep.square(f.pixels) for f in films])
    onnx = OnnxScorer(predictor, threads=1)
    eager = predictor.predict_squares(squares, batch_size=8)
    exported = onnx.predict_squares(squares, batch_size=8)
    assert exported.shape == eager.shape == (len(films), len(predictor.labels))
    assert np.abs(exported - eager).max() < TOLERANCE
    assert eager.std() > 0.01   # not a constant answer that would agree by accident
    # a batch size that does not divide the films, and the raw outputs a two-stage model combines
    assert np.abs(onnx.predict_squares(squares, batch_size=7, raw=True)
                  - predictor.predict_squares(squares, batch_size=7, raw=True)).max() < TOLERANCE


def test_the_export_is_kept_under_the_networks_digest_and_reused(shipped, home):
    from cxrcore.predictor import Predictor
    from cxrcore.runtime import OnnxScorer, export_onnx, network_digest, onnx_path, scorer

    tuned, base = Predictor(shipped["finetuned"]), Predictor(shipped["baseline"])
    first = OnnxScorer(tuned, threads=1)
    assert first.path == onnx_path(tuned) and first.path.parent == home / "cache" / "onnx"
    assert network_digest(tuned.card)[:16] in first.path.name
    site_view = Predictor(shipped["finetuned"])
    site_view.card.thresholds = {x: 0.9 for x in site_view.labels}      # other calls, the same network
    assert onnx_path(site_view) == first.path
    stamp = first.path.stat().st_mtime_ns
    assert export_onnx(tuned) == first.path and first.path.stat().st_mtime_ns == stamp   # reused, not rewritten
    assert onnx_path(base) != first.path                                                 # another card, another file
    assert not list(first.path.parent.glob(".*.tmp"))                                    # written whole
    network, runtime, why = scorer(tuned, "torch")
    assert (network, runtime, why) == (tuned, "torch", None)
    from cxrcore.errors import CXRError

    with pytest.raises(CXRError, match="Unknown runtime 'tensorrt'"):
        scorer(tuned, "tensorrt")
    with pytest.raises(CXRError, match="without test-time augmentation"):
        first.predict_squares(np.zeros((1, 8, 8), np.uint8), tta="flip")


def test_cxr_score_on_onnx_runtime_writes_the_same_table(app_home, shipped, home, tmp_path, capsys):
    folder = sorted((app_home / "datasets").glob("phantom-nih-*/images"))[0]
    files = sorted(folder.glob("*.png"))[:40]
    pd.DataFrame({"path": [str(p) for p in files]}).to_csv(tmp_path / "list.csv", index=False)
    tables = {}
    for runtime in ("torch", "onnx"):
        out = tmp_path / f"{runtime}.parquet"
        code, stdout, err = cxr_here(capsys, "score", tmp_path / "list.csv", "--checkpoint", shipped["finetuned"],
                                     "--out", out, "--runtime", runtime, "--json")
        assert code == 0, err
        summary = json.loads(stdout)
        assert (summary["rows"], summary["runtime"], summary["runtime_note"]) == (40, runtime, None)
        tables[runtime] = pd.read_parquet(out)
    torch_t, onnx_t = tables["torch"], tables["onnx"]
    labels = [c for c in torch_t.columns if f"{c} call" in torch_t.columns]
    assert onnx_t["path"].tolist() == torch_t["path"].tolist()
    assert np.abs(onnx_t[labels].to_numpy() - torch_t[labels].to_numpy()).max() < TOLERANCE
    assert (onnx_t[["ood", "warnings", "model", "card_sha256"]] == torch_t[["ood", "warnings", "model",
                                                                           "card_sha256"]]).all().all()
