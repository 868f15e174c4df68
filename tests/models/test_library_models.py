"""Library models used as they are: torchxrayvision's pretrained models by name (``xrv:...``).

Weight files are planted where the library looks (``CXR_XRV_CACHE_DIR``), made the way the library
makes its own: its model class with random weights saved whole with ``torch.save(model, path)`` for
the DenseNets, the inner torchvision model's state dict for the ResNet. Every surface runs on them:
Predictor, read_card / load_checkpoint, the Thresholds and Evaluation pages (AppTest), ``cxr predict /
eval / localize / train --init``, the REST service. Nothing here touches the network: ``CXR_OFFLINE=1``
makes the reachability probe answer "offline", and the optional download test serves the file from
a local HTTP server on 127.0.0.1.
"""
from __future__ import annotations

import base64
import http.server
import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FORMATS, NIH_SAMPLE, REPO, app_page, cxr_here, evaluate_on_page
from library_files import XRV_ALL, XRV_RESNET, plant_densenet, plant_resnet

XRV_CHEX = "chex-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt"
ALL = "xrv:densenet121-res224-all"
RESNET = "xrv:resnet50-res512-all"


@pytest.fixture(scope="module")
def predictions_cache(tmp_path_factory) -> Path:
    """One folder of cached split predictions for the module's workspaces. Its files are named by the model's
    weights hash, the data's fingerprint and the split (cxrcore.eval.predictions.predict_split), so the DenseNet
    planted with seed 0 is run over the real films' test and val splits once, by the first test that evaluates
    it; the pages and commands of the later tests read its outputs as a second evaluation does."""
    return tmp_path_factory.mktemp("lib-predictions")


@pytest.fixture
def lib_env(tmp_path, monkeypatch, app_home, predictions_cache):
    """A fresh workspace (the built-in phantoms and the 250 real NIH films of tests/data linked in; its prediction
    cache shared by the module: see predictions_cache), an empty xrv cache, and no network. The pages' tests
    evaluate on the real films: a DenseNet121 at 224 px over the phantom's splits takes minutes on a CPU, and real
    films are what a library model is for."""
    home = tmp_path / "home"
    (home / "datasets").mkdir(parents=True)
    for d in (app_home / "datasets").iterdir():
        (home / "datasets" / d.name).symlink_to(d, target_is_directory=True)
    (home / "datasets" / "nih-sample").symlink_to(NIH_SAMPLE, target_is_directory=True)
    (home / "predictions").symlink_to(predictions_cache, target_is_directory=True)
    cache = tmp_path / "xrv-cache"
    cache.mkdir()
    monkeypatch.setenv("CXR_HOME", str(home))
    monkeypatch.setenv("CXR_XRV_CACHE_DIR", str(cache))
    monkeypatch.setenv("CXR_OFFLINE", "1")
    monkeypatch.delenv("CXR_XRV_BASE_URL", raising=False)
    return {"home": home, "cache": cache, "env": dict(os.environ)}


def _cxr(*args, env):
    return subprocess.run([sys.executable, "-m", "cxrcore.cli", *args], capture_output=True, text=True, cwd=REPO,
                          env=env)


# ----------------------------------------------------------------------------- names and status
def test_names_status_and_cards_without_weights(lib_env):
    from cxrcore.checkpoint import read_card
    from cxrcore.models.library import library_models, library_ref

    plant_densenet(lib_env["cache"])
    models = {m["name"]: m for m in library_models()}
    assert list(models) == [f"xrv:densenet121-res224-{w}" for w in ("all", "nih", "pc", "chex", "rsna", "mimic_nb",
                                                                     "mimic_ch")] + [RESNET]
    assert models[ALL]["cached"] and not models["xrv:densenet121-res224-nih"]["cached"]
    nih = models["xrv:densenet121-res224-nih"]
    assert nih["folder"] == str(lib_env["cache"]) and nih["env"] == "CXR_XRV_CACHE_DIR"
    assert nih["url"].endswith("/nih-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt")
    assert library_ref("xrv:all") == ALL and library_ref("xrv:resnet50") == RESNET
    assert library_ref(str(REPO / "checkpoints" / "baseline")) is None
    with pytest.raises(Exception, match="Unknown library model"):
        library_ref("xrv:densenet121-res224-foo")
    # a card needs no weight file: labels, thresholds, preprocessing, what it saw
    chex = read_card("xrv:chex")
    assert chex.labels == ["Atelectasis", "Consolidation", "Pneumothorax", "Edema", "Effusion", "Pneumonia",
                           "Cardiomegaly", "Lung Lesion", "Fracture", "Lung Opacity", "Enlarged Cardiomediastinum"]
    assert "" not in chex.labels and "Infiltration" not in chex.labels  # not trained on: not an output
    assert chex.thresholds["Effusion"] == pytest.approx(0.27212676)
    assert chex.trained_on["kind"] == "library" and chex.trained_on["datasets"] == ["CheXpert"]
    assert chex.training_kind() == "library"
    assert chex.preprocess == {"size": 224, "fit": "crop", "norm": "xrv", "channels": 1}
    assert any("[-1024, 1024]" in n for n in chex.notes) and any("Apache-2.0" in n for n in chex.notes)
    lib = chex.training["library"]
    assert lib["version"] == "1.5.7" and lib["weights"] == "densenet121-res224-chex"
    res = read_card(RESNET)
    assert res.preprocess["size"] == 512 and len(res.labels) == 16
    assert "Lung Lesion" not in res.labels and "Enlarged Cardiomediastinum" not in res.labels  # no op_thresh: untrained
    assert res.trained_on["datasets"] == ["PadChest", "NIH ChestX-ray14", "RSNA Pneumonia Challenge (Kaggle)",
                                          "SIIM-ACR Pneumothorax", "VinDr-CXR"]
    rsna = read_card("xrv:densenet121-res224-rsna")
    assert rsna.labels == ["Pneumonia", "Lung Opacity"]


def test_offline_without_the_file_one_message_names_file_folder_url_and_variable(lib_env):
    from cxrcore.errors import ConfigError
    from cxrcore.predictor import Predictor

    file = "nih-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt"
    url = f"https://github.com/mlmed/torchxrayvision/releases/download/v1/{file}"
    with pytest.raises(ConfigError) as err:
        Predictor("xrv:densenet121-res224-nih")
    msg = str(err.value)
    assert file in msg and str(lib_env["cache"]) in msg and url in msg and "CXR_XRV_CACHE_DIR" in msg
    assert not (lib_env["home"] / "library" / "xrv-densenet121-res224-nih").exists()  # never a random model
    # the CLI, as a process (nothing of the library imported before): one line, exit status 2, no traceback
    r = _cxr("predict", str(FORMATS / "00000001_000.png"), "--checkpoint", "xrv:nih", env=lib_env["env"])
    assert r.returncode == 2 and r.stderr.startswith("error:") and file in r.stderr and url in r.stderr
    assert "Traceback" not in r.stderr


# ----------------------------------------------------------------------------------- safe loading
class _Marker:
    """A pickle whose unpickling would create a file (os.system: runs a shell command)."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


class _CallsTheConstructor:
    """A pickle that calls xrv's DenseNet constructor, which would load another file with weights_only=False."""

    def __init__(self, folder: Path):
        self.folder = folder

    def __reduce__(self):
        import torchxrayvision as xrv

        return (xrv.models.DenseNet, (32, (6, 12, 24, 16), 64, 4, 0, 18, 1, "densenet121-res224-all", str(self.folder)))


def test_a_malicious_pickle_at_the_cache_path_is_refused_without_running(lib_env, tmp_path, capsys):
    from cxrcore.errors import CheckpointError
    from cxrcore.predictor import Predictor

    marker = tmp_path / "PWNED"
    torch.save({"features.conv0.weight": _Marker(marker)}, lib_env["cache"] / XRV_ALL)
    with pytest.raises(CheckpointError) as err:
        Predictor(ALL)
    assert not marker.exists()
    msg = str(err.value)
    assert "Refused to load" in msg and XRV_ALL in msg and "posix.system" in msg and "Nothing in it was run" in msg
    # a file asking for the library's own constructor (which would unpickle a file of the attacker's choosing)
    evil = tmp_path / "evil"
    (evil).mkdir()
    torch.save(_Marker(marker), evil / XRV_ALL)
    torch.save(_CallsTheConstructor(evil), lib_env["cache"] / XRV_ALL)
    with pytest.raises(CheckpointError, match="refusing to call torchxrayvision.models.DenseNet"):
        Predictor(ALL)
    assert not marker.exists()
    # the CLI says so in one line (its main, here: `cxr` as a process is the offline test's)
    code, _, err = cxr_here(capsys, "predict", FORMATS / "00000001_000.png", "--checkpoint", ALL)
    assert code == 2 and "Refused to load" in err and not marker.exists()


def test_safe_reader_gives_the_library_state_dict(lib_env):
    from cxrcore.models.xrv_family import read_state_dict

    ref = plant_densenet(lib_env["cache"])
    state = read_state_dict(lib_env["cache"] / XRV_ALL)
    want = {k: v for k, v in ref.state_dict().items() if k != "op_threshs"}
    assert state.keys() == want.keys() and all(torch.equal(state[k], want[k]) for k in want)
    res = plant_resnet(lib_env["cache"])
    assert all(torch.equal(a, b) for a, b in zip(read_state_dict(lib_env["cache"] / XRV_RESNET).values(),
                                                 res.state_dict().values()))


# ------------------------------------------------------------------------------------ predictions
def test_predictor_equals_the_library_module(lib_env):
    import torchxrayvision as xrv

    from cxrcore.explain.cam import supports_fast_cam
    from cxrcore.predictor import Predictor

    ref = plant_densenet(lib_env["cache"])
    p = Predictor(ALL)
    assert p.name == ALL and p.fast_cam and supports_fast_cam(p.model)
    xrv_labels = xrv.models.model_urls["densenet121-res224-all"]["labels"]
    assert p.labels == xrv_labels  # all 18 trained; NIH / CheXpert spellings already
    thr = xrv.models.model_urls["densenet121-res224-all"]["op_threshs"]
    assert np.allclose(p.thresholds, np.array(thr, dtype=np.float32))
    img = np.random.default_rng(0).random((300, 260)).astype(np.float32)
    pred = p.predict(img)
    x = p.prep.normalize(torch.from_numpy(p.prep.square(img))[None])
    assert float(x.min()) >= -1024 and float(x.max()) <= 1024 and x.shape == (1, 1, 224, 224)
    with torch.no_grad():
        theirs = torch.sigmoid(ref(x))[0].numpy()  # xrv's own forward (no op_threshs on a weights=None module)
    assert np.allclose(pred.probs, theirs, atol=1e-5)
    assert pred.heatmaps.shape[0] == 18 and pred.cam_grid == (7, 7)
    # made once, under the workspace, never next to the code
    folder = lib_env["home"] / "library" / "xrv-densenet121-res224-all"
    assert (folder / "card.json").is_file() and (folder / "weights.safetensors").is_file()
    card = json.loads((folder / "card.json").read_text())
    assert card["training"]["library"]["file"] == XRV_ALL and len(card["training"]["library"]["sha256"]) == 64
    assert not list((REPO / "checkpoints").glob("xrv*"))


def test_resnet_labels_and_outputs(lib_env):
    from cxrcore.predictor import Predictor

    ref = plant_resnet(lib_env["cache"])
    p = Predictor(RESNET)
    assert len(p.labels) == 16 and p.prep.size == 512 and p.fast_cam
    img = np.random.default_rng(1).random((200, 240)).astype(np.float32)
    pred = p.predict(img, heatmaps=False)
    import torchxrayvision as xrv

    names = xrv.models.model_urls["resnet50-res512-all"]["labels"]
    cols = [names.index(x) for x in p.labels]
    x = p.prep.normalize(torch.from_numpy(p.prep.square(img))[None])
    with torch.no_grad():
        theirs = torch.sigmoid(ref(x))[0, cols].numpy()
    assert np.allclose(pred.probs, theirs, atol=1e-5)


@pytest.mark.parametrize("name", [ALL, RESNET])
def test_single_pass_heatmaps_equal_pytorch_grad_cam(lib_env, name):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from cxrcore.explain.cam import forward_with_cams, scale_maps, target_layer
    from cxrcore.predictor import Predictor

    (plant_densenet if name == ALL else plant_resnet)(lib_env["cache"])
    model = Predictor(name).model
    torch.manual_seed(0)
    x = torch.randn(1, 1, 96, 96) * 400
    logits, fast = forward_with_cams(model, x)
    with GradCAM(model=model, target_layers=[target_layer(model)]) as cam:
        for j in (0, 5, len(logits[0]) - 1):
            cam(input_tensor=x, targets=[ClassifierOutputTarget(j)])
            acts = cam.activations_and_grads.activations[0].numpy()
            grads = cam.activations_and_grads.gradients[0].numpy()
            weights = cam.get_cam_weights(x, [target_layer(model)], None, acts, grads)
            ref = scale_maps((weights[:, :, None, None] * acts).sum(1))
            assert np.allclose(ref, fast[:, j], atol=1e-3), (name, j)


def test_many_sessions_load_the_same_library_model_at_once(lib_env):
    from cxrcore.predictor import Predictor

    plant_densenet(lib_env["cache"])
    img = np.random.default_rng(2).random((128, 128)).astype(np.float32)
    with ThreadPoolExecutor(max_workers=4) as pool:
        probs = list(pool.map(lambda _: Predictor(ALL).predict(img, heatmaps=False).probs, range(4)))
    assert all(np.array_equal(probs[0], q) for q in probs[1:])
    assert [p.name for p in (lib_env["home"] / "library").iterdir() if not p.name.startswith(".")] == [
        "xrv-densenet121-res224-all"]


def test_a_changed_library_file_is_picked_up(lib_env):
    from cxrcore.predictor import Predictor

    plant_densenet(lib_env["cache"], seed=0)
    first = Predictor(ALL).model.get_classifier().bias.detach().clone()
    ref = plant_densenet(lib_env["cache"], seed=5)
    os.utime(lib_env["cache"] / XRV_ALL, ns=(1, 1))  # a different file (size may be equal): mtime tells
    second = Predictor(ALL).model.get_classifier().bias.detach()
    assert not torch.equal(first, second) and torch.equal(second, ref.classifier.bias)


def test_download_through_the_library_url_with_progress(lib_env, tmp_path, monkeypatch):
    """Online: the file comes from the library's URL (here a mirror on 127.0.0.1, CXR_XRV_BASE_URL) into
    the library's folder, with progress reported; then the model loads."""
    from cxrcore.models.library import fetch_weights
    from cxrcore.predictor import Predictor

    served = tmp_path / "served"
    plant_densenet(served)
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(served), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.delenv("CXR_OFFLINE")
        monkeypatch.setenv("CXR_XRV_BASE_URL", f"http://127.0.0.1:{server.server_address[1]}/v1")
        (served / "v1").mkdir()
        (served / XRV_ALL).rename(served / "v1" / XRV_ALL)
        seen = []
        path = fetch_weights(ALL, progress=lambda done, total: seen.append((done, total)))
        assert path == lib_env["cache"] / XRV_ALL and path.stat().st_size == (served / "v1" / XRV_ALL).stat().st_size
        assert seen and seen[-1][0] == seen[-1][1] == path.stat().st_size
        assert not list(lib_env["cache"].glob("*.part"))
        assert Predictor(ALL).labels[0] == "Atelectasis"
    finally:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------------------- thresholds
def test_thresholds_are_saved_to_a_workspace_copy(lib_env):
    from cxrcore.checkpoint import read_card, write_card
    from cxrcore.errors import CheckpointError
    from cxrcore.eval.thresholds import save_thresholds
    from cxrcore.models.library import default_thresholds, editable_copy
    from ui.common import checkpoint_choices, choice_label

    plant_densenet(lib_env["cache"])
    choices = checkpoint_choices()
    assert choices[f"{ALL} (library)"] == ALL
    assert choice_label(f"{ALL} (library)") == f"{ALL} (library)"
    assert choice_label("xrv:densenet121-res224-nih (library)").endswith("needs weights")
    with pytest.raises(CheckpointError, match="library model"):
        write_card(ALL, read_card(ALL))
    copy = editable_copy(ALL)
    assert copy == lib_env["home"] / "checkpoints" / "xrv-densenet121-res224-all"
    save_thresholds(copy, {"Mass": 0.3})
    mine = read_card(copy)
    assert mine.thresholds["Mass"] == 0.3 and default_thresholds(mine)["Mass"] == pytest.approx(0.01939503)
    assert read_card(ALL).thresholds["Mass"] == pytest.approx(0.01939503)  # the library model keeps its own
    assert checkpoint_choices()[f"{ALL} (your thresholds)"] == str(copy)


# ------------------------------------------------------------------------------------------- pages
def _page(name: str):
    return app_page(name, 600)


def test_thresholds_page_library_default_and_saved_copy(lib_env):
    plant_densenet(lib_env["cache"])
    at = _page("thresholds")
    # chosen before the first run, which would otherwise tune the default model on the phantom's 350 val images
    at.session_state["thr_data"], at.session_state["thr_model"] = "nih-sample", f"{ALL} (library)"
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="thr_model").value == f"{ALL} (library)"
    table = at.dataframe[0].value
    assert set(table["threshold origin"]) == {"library default"}
    assert any("Library default" in c.value for c in at.caption)
    import torchxrayvision as xrv

    op = dict(zip(xrv.models.model_urls["all"]["labels"], xrv.models.model_urls["all"]["op_threshs"]))
    first, second = list(table["label"])[:2]
    assert table.set_index("label").loc[first, "threshold"] == pytest.approx(op[first], abs=1e-4)  # 4 decimals kept
    at.slider(key=f"thr::{ALL}::{first}").set_value(0.25).run()
    assert at.dataframe[0].value.set_index("label").loc[first, "threshold origin"] == "edited"
    at.button(key="thr_save").click().run()
    assert not at.exception and any("untouched" in s.value for s in at.success)
    from cxrcore.checkpoint import read_card

    card = read_card(lib_env["home"] / "checkpoints" / "xrv-densenet121-res224-all")
    assert card.thresholds[first] == 0.25
    assert card.thresholds[second] == pytest.approx(op[second], abs=1e-9)  # untouched defaults stay exact
    assert read_card(ALL).thresholds[first] == pytest.approx(op[first])      # the library model keeps its own
    at.button(key="thr_library_reset").click().run()
    assert not at.exception


def test_thresholds_page_offline_without_weights_shows_the_message(lib_env):
    at = _page("thresholds")
    at.session_state["thr_model"] = "xrv:densenet121-res224-pc (library)"  # the first run: no default model tuned
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="thr_model").value == "xrv:densenet121-res224-pc (library)"
    text = " ".join(e.value for e in at.error)
    assert "pc-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt" in text and "CXR_XRV_CACHE_DIR" in text


def test_compare_page_library_model_against_a_shipped_one(lib_env, shipped):
    plant_densenet(lib_env["cache"])
    at = _page("compare").run()
    at.selectbox(key="compare_base").set_value(f"{ALL} (library)").run()
    at.radio(key="compare_source").set_value("A held-out phantom test image (ground truth known)").run()
    assert not at.exception, [e.value for e in at.exception]
    table = at.dataframe[0].value
    assert table["baseline p"].notna().sum() == 18 and "Hernia" in set(table["label"])
    cards = " ".join(m.value for m in at.markdown)
    assert "torchxrayvision 1.5.7, weights densenet121-res224-all" in cards and "library default" in cards


def test_evaluation_page_on_a_library_model(lib_env):
    plant_densenet(lib_env["cache"])
    at = evaluate_on_page(f"{ALL} (library)")
    assert at.session_state["eval_params"]["ckpt"] == ALL
    assert any("Cardiomegaly" in str(v) for v in at.dataframe[0].value.to_numpy().ravel())  # real films scored


# ------------------------------------------------------------------------------- CLI and REST API
def test_cli_predict_eval_localize_with_a_library_model(lib_env, shipped, tmp_path, capsys):
    plant_densenet(lib_env["cache"])
    code, out, err = cxr_here(capsys, "predict", FORMATS / "00000001_000.png", "--checkpoint", ALL, "--json")
    assert code == 0, err
    out = json.loads(out)
    assert len(out["probabilities"]) == 18 and out["thresholds"]["Mass"] == pytest.approx(0.01939503, abs=1e-6)
    assert "torchxrayvision" in out.get("trained_on", "torchxrayvision")
    code, out, err = cxr_here(capsys, "predict", str(FORMATS / "00000001_000.png"), "--checkpoint", "xrv:all")
    assert code == 0 and "Cardiomegaly" in out, err
    # evaluation on real NIH images, library model vs a shipped checkpoint on their shared labels
    code, out, err = cxr_here(capsys, "eval", "--checkpoint", ALL, "--data", str(NIH_SAMPLE), "--split", "test",
                               "--n-boot", "20", "--compare", str(shipped["finetuned"]), "--json",
                               "--out", str(tmp_path / "eval"))
    assert code == 0, err
    metrics = json.loads(out)
    assert "Cardiomegaly" in metrics["per_label"] and metrics["comparison"]["per_label"]
    code, out, err = cxr_here(capsys, "localize", "--checkpoint", ALL, "--data", str(NIH_SAMPLE), "--split", "all",
                               "--max-images", "3", "--json")
    assert code == 0, err
    assert json.loads(out)["n_images"] == 3


def test_cli_eval_save_calibration_goes_to_the_copy(lib_env, tmp_path, capsys):
    from cxrcore.checkpoint import read_card

    plant_densenet(lib_env["cache"])
    code, out, err = cxr_here(capsys, "eval", "--checkpoint", ALL, "--data", str(NIH_SAMPLE), "--split", "test",
                               "--n-boot", "10", "--save-calibration", "--out", str(tmp_path / "e"))
    assert code == 0, err[-3000:]
    copy = lib_env["home"] / "checkpoints" / "xrv-densenet121-res224-all"
    assert str(copy / "card.json") in err
    assert read_card(copy).temperature_list() is not None   # in the workspace copy
    assert read_card(ALL).temperature_list() is None         # never in the library model itself


def test_rest_service_serves_a_library_model(lib_env, shipped):
    import http.client

    from cxrcore.api import Service, make_server

    plant_densenet(lib_env["cache"])
    server = make_server(Service([ALL, str(shipped["finetuned"])]), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        def call(method, path, body=None):
            conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=120)
            conn.request(method, path, body=json.dumps(body).encode() if body is not None else None)
            resp = conn.getresponse()
            out = (resp.status, json.loads(resp.read()))
            conn.close()
            return out

        status, health = call("GET", "/health")
        assert status == 200 and ALL in health["models"] and len(health["labels"][ALL]) == 18
        image = base64.b64encode((FORMATS / "00000001_000.png").read_bytes()).decode()
        status, out = call("POST", "/predict", {"image": image, "model": ALL, "heatmaps": False})
        assert status == 200, out
        assert len(out["predictions"]) == 18 and out["model_name"] == ALL
        assert out["predictions"]["Mass"]["threshold"] == pytest.approx(0.01939503, abs=1e-6)
    finally:
        server.shutdown()
        server.server_close()


def test_cli_train_init_from_a_library_model(lib_env, tmp_path, capsys):
    """Fine-tune the library model as is: head swapped to the phantom's labels (shared rows copied)."""
    plant_densenet(lib_env["cache"])
    run = tmp_path / "run"
    from cxrcore.data.phantom import generate

    # a small phantom of its own: the DenseNet121 runs on CPU, and the app's data has ~700 test images
    data = generate(tmp_path / "phantom", 150, domain="nih", size=128, seed=0, workers=1)
    code, _, err = cxr_here(capsys, "train", "--data", data, "--labels", "nih14", "--init", "xrv:all", "--epochs", "1",
                            "--batch-size", "8", "--max-images", "24", "--out", run)
    assert code == 0, err[-3000:]
    from cxrcore.checkpoint import read_card

    card = read_card(run / "checkpoint")
    assert card.model["arch"] == ALL and card.preprocess["norm"] == "xrv" and card.preprocess["size"] == 224
    assert card.training["config"]["init"] == ALL
    assert "torchxrayvision" in card.trained_on["summary"] and "phantom" in card.trained_on["summary"]
    # the library model as is vs its fine-tuned copy, on their shared labels (the val split: 15 images, and no
    # temperatures fitted, which a library model's evaluation shows in test_cli_eval_save_calibration_goes_to_the_copy)
    code, out, err = cxr_here(capsys, "eval", "--checkpoint", ALL, "--data", str(data), "--split", "val",
                               "--n-boot", "10", "--compare", str(run / "checkpoint"), "--json",
                               "--out", str(tmp_path / "ev"))
    assert code == 0, err[-3000:]
    assert json.loads(out)["comparison"]["per_label"]
