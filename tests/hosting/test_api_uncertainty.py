"""Monte-Carlo dropout uncertainty, the out-of-distribution guard and the REST API, on real images."""
from __future__ import annotations

import base64
import http.client
import io
import json
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image, ImageDraw

from conftest import FORMATS, NIH_SAMPLE, REPO

PNG = FORMATS / "00000001_000.png"
DICOM = FORMATS / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"


def real_images() -> list:
    files = sorted(p for p in FORMATS.iterdir() if p.is_file())
    files += sorted((NIH_SAMPLE / "images").glob("*.png"))
    return files


# --------------------------------------------------------------------------- synthetic non-CXR images
def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def synthetic_non_cxr(seed: int = 0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    out = {}
    low = rng.uniform(0, 255, (6, 8, 3)).astype(np.uint8)  # smooth random colour field, photo-like
    out["colour_photo"] = _png(np.asarray(Image.fromarray(low).resize((400, 300), Image.BICUBIC)))
    page = Image.new("L", (500, 700), 250)  # document scan: white page, black text lines
    d = ImageDraw.Draw(page)
    for y in range(60, 650, 22):
        x1 = int(rng.uniform(300, 450))
        d.text((40, y), "Lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod"[: x1 // 7], fill=10)
        d.rectangle([40, y + 12, x1, y + 14], fill=30)
    out["document"] = _png(np.asarray(page))
    yy, xx = np.mgrid[:256, :256]  # CT-like slice: centred body disc with a bright ring on black, two lungs
    r = np.hypot(yy - 128, xx - 128)
    ct = np.where(r < 100, 0.35, 0.0) + np.where((r >= 90) & (r < 100), 0.55, 0.0)
    ct -= 0.25 * ((np.hypot(yy - 120, xx - 90) < 25) | (np.hypot(yy - 120, xx - 166) < 25))
    ct = np.clip(ct + rng.normal(0, 0.02, ct.shape), 0, 1)
    out["ct_slice"] = _png((ct * 255).astype(np.uint8))
    yy, xx = np.mgrid[:300, :256] / 256.0  # lateral-like: a body profile on one side, strongly asymmetric
    lat = 0.8 * np.exp(-((xx - 0.3) ** 2) / 0.02 - ((yy - 0.5) ** 2) / 0.2) + 0.1 * xx
    lat[:, :40] += 0.3
    out["lateral_like"] = _png((np.clip(lat, 0, 1) * 255).astype(np.uint8))
    out["noise"] = _png(rng.integers(0, 256, (256, 256), dtype=np.uint8))
    out["constant"] = _png(np.full((256, 256), 128, np.uint8))
    return out


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def baseline(shipped):
    from cxrcore.predictor import Predictor

    return Predictor(shipped["baseline"])


def _start(service):
    from cxrcore.api import make_server

    server = make_server(service, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server


@pytest.fixture(scope="module")
def api(shipped):
    from cxrcore.api import Service

    service = Service([shipped["baseline"], shipped["finetuned"]], token=None, max_bytes=5_000_000)
    server = _start(service)
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def request(port, method, path, body=None, headers=None, raw: bytes | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    conn.request(method, path, body=data, headers=headers or {})
    resp = conn.getresponse()
    payload = resp.read()
    conn.close()
    return resp.status, json.loads(payload), dict(resp.getheaders())


def b64(path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


# --------------------------------------------------------------------------- MC dropout
def test_mc_dropout_variance_seed_and_mean(baseline):
    from cxrcore.explain.uncertainty import mc_dropout

    plain = baseline.predict(PNG, heatmaps=False)
    a = baseline.predict(PNG, heatmaps=False, mc_samples=30, mc_seed=1)
    b = baseline.predict(PNG, heatmaps=False, mc_samples=30, mc_seed=1)
    c = baseline.predict(PNG, heatmaps=False, mc_samples=30, mc_seed=2)
    assert a.prob_var.shape == (len(baseline.labels),)
    assert (a.prob_var > 0).all() and a.prob_var.max() > 1e-4
    np.testing.assert_allclose(a.prob_std ** 2, a.prob_var, rtol=1e-4, atol=1e-9)
    np.testing.assert_array_equal(a.prob_mean, b.prob_mean)  # reproducible with a seed
    np.testing.assert_array_equal(a.prob_var, b.prob_var)
    assert not np.array_equal(a.prob_mean, c.prob_mean)      # another seed, other masks
    assert np.abs(a.prob_mean - plain.probs).max() < 0.1     # dropout is a perturbation, not another model
    np.testing.assert_array_equal(a.probs, plain.probs)      # the deterministic output is unchanged
    d = a.to_dict()
    assert set(d["prob_mean"]) == set(baseline.labels) and d["mc"]["samples"] == 30 and d["mc"]["dropout_p"] == 0.2
    # the model is left in eval mode, BatchNorm untouched
    assert not any(m.training for m in baseline.model.modules())
    # test-time augmentation averaged in, still close
    t = baseline.predict(PNG, heatmaps=False, mc_samples=14, mc_tta=True)
    u = baseline.predict(PNG, heatmaps=False, mc_samples=14)
    assert t.mc["tta"] and not u.mc["tta"]
    assert not np.allclose(t.prob_mean, u.prob_mean)      # the augmented views change the passes' inputs
    assert ((t.prob_mean >= 0) & (t.prob_mean <= 1)).all() and (t.prob_var > 0).all()
    # p = 0 and no dropout in the model: every pass is the plain prediction
    x = baseline.prep.normalize(__import__("torch").from_numpy(baseline.prep.square(
        __import__("cxrcore.data.imageio", fromlist=["read_image"]).read_image(PNG).pixels))[None])
    r = mc_dropout(baseline.model, x, n=5, p=0.0)
    assert r.var.max() < 1e-10 and np.abs(r.mean - plain.probs).max() < 1e-5


def test_mc_samples_zero_leaves_predictions_unchanged(baseline):
    a = baseline.predict(DICOM)
    b = baseline.predict(DICOM, mc_samples=0)
    np.testing.assert_array_equal(a.probs, b.probs)
    np.testing.assert_array_equal(a.heatmaps, b.heatmaps)
    assert b.prob_mean is None and b.prob_std is None
    da, db = a.to_dict(), b.to_dict()
    da.pop("seconds"), db.pop("seconds")
    assert da == db and "prob_mean" not in db


# --------------------------------------------------------------------------- OOD guard
def test_ood_no_real_xray_flagged():
    from cxrcore.data.imageio import read_image
    from cxrcore.explain.ood import check_image

    files = real_images()
    assert len(files) >= 250
    flagged = []
    for f in files:
        data = f.read_bytes()
        r = check_image(read_image(data, f.name), raw=data)
        if r.is_suspect:
            flagged.append((f.name, r.reasons))
    assert not flagged, flagged


@pytest.mark.parametrize("kind,why", [("colour_photo", "colour"), ("document", "white background"),
                                      ("ct_slice", "CT"), ("lateral_like", "symmetric"), ("noise", "noise"),
                                      ("constant", "constant")])
def test_ood_synthetic_non_cxr_flagged(kind, why):
    from cxrcore.data.imageio import read_image
    from cxrcore.explain.ood import check_image

    data = synthetic_non_cxr()[kind]
    r = check_image(read_image(data, f"{kind}.png"), raw=data)
    assert r.is_suspect and r.score >= 1 and r.reasons, (kind, r.stats)
    assert any(why in x for x in r.reasons), (kind, r.reasons)  # caught for the intended reason


# --------------------------------------------------------------------------- REST API
def test_health(api):
    status, body, _ = request(api, "GET", "/health")
    assert status == 200 and body["status"] == "ok"
    assert body["models"] == ["baseline", "finetuned"] and len(body["labels"]["baseline"]) == 14


def test_predict_png_and_dicom(api):
    for path, fmt in ((PNG, "PNG"), (DICOM, "DICOM")):
        status, body, _ = request(api, "POST", "/predict", {"image": b64(path), "name": path.name})
        assert status == 200, body
        assert len(body["predictions"]) == 14 and body["model"] == "baseline"
        for d in body["predictions"].values():
            assert 0.0 <= d["probability"] <= 1.0 and 0.0 <= d["threshold"] <= 1.0
            assert isinstance(d["positive"], bool) and "variance" not in d
        assert body["image"]["format"] == fmt and body["ood"]["is_suspect"] is False and body["warning"] is None
        assert body["timing"]["total_ms"] > 0 and "heatmaps" not in body
    text = json.dumps(body)
    for secret in ("PatientName", "PatientID", "StudyInstanceUID", "modality CR", "transfer syntax"):
        assert secret not in text  # no DICOM metadata in the response


def test_predict_heatmaps_mc_and_model_choice(api):
    status, body, _ = request(api, "POST", "/predict", {"image": b64(PNG), "model": "finetuned",
                                                         "heatmaps": True, "mc_samples": 10})
    assert status == 200, body
    assert body["model"] == "finetuned" and "No Finding" in body["predictions"]
    assert len(body["heatmaps"]) == 14
    for s in body["heatmaps"].values():
        im = Image.open(io.BytesIO(base64.b64decode(s)))
        assert im.format == "PNG" and im.size[0] > 0
    for d in body["predictions"].values():
        assert 0.0 <= d["mean"] <= 1.0 and d["variance"] >= 0 and d["std"] >= 0
    assert any(d["variance"] > 0 for d in body["predictions"].values())
    assert body["uncertainty"]["samples"] == 10


def test_predict_flags_ood_upload(api):
    data = synthetic_non_cxr()["document"]
    status, body, _ = request(api, "POST", "/predict", {"image": base64.b64encode(data).decode()})
    assert status == 200 and body["ood"]["is_suspect"] and "frontal chest radiograph" in body["warning"]


def test_api_errors_and_keeps_serving(api):
    cases = [
        ("POST", "/predict", b"{not json", 400),
        ("POST", "/predict", json.dumps({"image": "@@@ not base64 !!"}).encode(), 400),
        ("POST", "/predict", json.dumps({"image": base64.b64encode(b"hello, this is a text file\n" * 20).decode()}).encode(), 400),
        ("POST", "/predict", json.dumps({"image": b64(PNG), "mc_samples": 51}).encode(), 400),
        ("POST", "/predict", json.dumps({"image": b64(PNG), "model": "nope"}).encode(), 404),
        ("POST", "/predict", json.dumps([1, 2]).encode(), 400),
        ("GET", "/nowhere", None, 404),
        ("GET", "/predict", None, 405),
        ("DELETE", "/health", None, 405),
    ]
    for method, path, raw, code in cases:
        status, body, headers = request(api, method, path, raw=raw,
                                        headers={"Content-Type": "application/json"} if raw else {})
        assert status == code, (method, path, body)
        assert body["status"] == code and body["error"] and "Traceback" not in body["error"]
    _, body, _ = request(api, "POST", "/predict", {"image": base64.b64encode(b"hello, this is a text file\n" * 20).decode()})
    assert "text file" in body["error"]  # the reader's ImageError message
    status, body, _ = request(api, "GET", "/health")
    assert status == 200


def test_api_oversize_body_413(api):
    # Content-Length over the limit: refused from the header, before the body is read (none is sent)
    conn = http.client.HTTPConnection("127.0.0.1", api, timeout=30)
    conn.putrequest("POST", "/predict")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(5_000_001))
    conn.endheaders()
    resp = conn.getresponse()
    body = json.loads(resp.read())
    conn.close()
    assert resp.status == 413 and "limit" in body["error"]
    # a real oversize body: the client may see the connection closed while still sending
    import socket

    big = json.dumps({"image": "A" * 5_100_000}).encode()
    with socket.create_connection(("127.0.0.1", api), timeout=30) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(big)}\r\n\r\n".encode())
        try:
            sock.sendall(big)
        except OSError:
            pass
        try:
            head = sock.recv(64)
            assert head.startswith(b"HTTP/1.1 413"), head
        except ConnectionResetError:
            pass
    # missing Content-Length: 411
    conn = http.client.HTTPConnection("127.0.0.1", api, timeout=30)
    conn.putrequest("POST", "/predict")
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 411 and json.loads(resp.read())["status"] == 411
    conn.close()
    assert request(api, "GET", "/health")[0] == 200


def test_api_token(shipped):
    from cxrcore.api import Service

    token = "s3cret-token-value"
    server = _start(Service([shipped["baseline"]], token=token))
    port = server.server_address[1]
    try:
        payload = {"image": b64(PNG)}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {token}"}):
            status, body, hdrs = request(port, "POST", "/predict", payload, headers)
            assert status == 401 and token not in json.dumps(body) and "WWW-Authenticate" in hdrs
        status, body, _ = request(port, "POST", "/predict", payload, {"Authorization": f"Bearer {token}"})
        assert status == 200 and len(body["predictions"]) == 14
        assert request(port, "GET", "/health")[0] == 200
    finally:
        server.shutdown()
        server.server_close()


def test_api_500_hides_traceback(api, monkeypatch, caplog):
    from cxrcore.api import Service

    def boom(self, req):
        raise RuntimeError("internal detail")

    monkeypatch.setattr(Service, "predict", boom)
    status, body, _ = request(api, "POST", "/predict", {"image": b64(PNG)})
    assert status == 500 and "internal detail" not in json.dumps(body) and "Traceback" not in json.dumps(body)
    monkeypatch.undo()
    assert request(api, "GET", "/health")[0] == 200


def test_cli_serve_help():
    out = subprocess.run([sys.executable, "-m", "cxrcore.cli", "serve", "--help"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--checkpoint" in out.stdout and "--max-bytes" in out.stdout
