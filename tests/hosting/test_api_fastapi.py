"""The FastAPI service behind `cxr serve`, over real HTTP on 127.0.0.1: seed 003's request and answer, the batch
and study endpoints, the OpenAPI description, every refusal (token, size from Content-Length before the body,
validation), `cxr serve` as a subprocess with two workers, and /docs rendered by headless Chromium from files
this service serves itself (no CDN)."""
from __future__ import annotations

import base64
import http.client
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from conftest import FORMATS, REPO, wait_for

PNG = FORMATS / "00000001_000.png"
PNG2 = FORMATS / "00027426_000.png"
DICOM = FORMATS / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
TOKEN = "tok-9f8e7d6c5b4a"


# --------------------------------------------------------------------------- helpers
def b64(path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def b64_bytes(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def call(port, method, path, body=None, headers=None, raw: bytes | None = None, timeout=300):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    hdrs = {"Content-Type": "application/json"} if data is not None else {}
    hdrs.update(headers or {})
    conn.request(method, path, body=data, headers=hdrs)
    resp = conn.getresponse()
    payload = resp.read()
    conn.close()
    try:
        parsed = json.loads(payload)
    except ValueError:
        parsed = payload.decode(errors="replace")
    return resp.status, parsed, {k.lower(): v for k, v in resp.getheaders()}


def raw_exchange(port, head: bytes) -> tuple[bytes, bytes]:
    """Send only ``head`` (request line and headers, no body); the server's whole answer, and what is read
    after it (b"" when the server closed the connection)."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(head)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head_part, _, rest = data.partition(b"\r\n\r\n")
        length = int([ln.split(b":", 1)[1] for ln in head_part.split(b"\r\n")
                      if ln.lower().startswith(b"content-length:")][0])
        while len(rest) < length:
            rest += sock.recv(65536)
        try:
            after = sock.recv(1024)
        except ConnectionResetError:
            after = b""
        return head_part + b"\r\n\r\n" + rest[:length], after


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(service):
    from cxrcore.api import make_server

    server = make_server(service, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    wait_for(lambda: _up(server.server_address[1]), 60, what="the API server")
    return server


def _up(port) -> bool:
    try:
        return call(port, "GET", "/health", timeout=5)[0] == 200
    except OSError:
        return False


def _stop(server):
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def service(shipped):
    from cxrcore.api import Service

    return Service([shipped["baseline"], shipped["finetuned"]], max_bytes=3_000_000, max_image_bytes=1_000_000,
                   max_batch=3)


@pytest.fixture(scope="module")
def api(service):
    server = _start(service)
    yield server.server_address[1]
    _stop(server)


@pytest.fixture(scope="module")
def guarded(shipped):
    """A second server that requires a bearer token."""
    from cxrcore.api import Service

    server = _start(Service([shipped["baseline"]], token=TOKEN, max_bytes=3_000_000))
    yield server.server_address[1]
    _stop(server)


# --------------------------------------------------------------------------- seed 003
def test_seed003_request_gets_seed003_answer(api, service):
    status, body, headers = call(api, "POST", "/predict", {"cxr_base64": b64(PNG)})
    assert status == 200, body
    assert body["success"] is True and headers["cache-control"] == "no-store"
    labels = service.models["baseline"].labels
    assert set(body["prediction_mean"]) == set(labels) == set(body["prediction_variance"]) == set(body["heatmap"])
    assert all(0.0 <= p <= 1.0 for p in body["prediction_mean"].values())
    assert all(v >= 0.0 for v in body["prediction_variance"].values())
    assert any(v > 0.0 for v in body["prediction_variance"].values())
    assert body["inference_duration"] > 0 and body["mc_samples"] == 20  # the default for this shape
    # the numbers are the model's own Monte-Carlo mean and variance (20 passes, seed 0), not made up here
    pred = service.models["baseline"].predict(PNG, heatmaps=True, mc_samples=20, mc_seed=0)
    for i, x in enumerate(labels):  # each label's heatmap, as an 8-bit grayscale PNG in the image's frame
        im = Image.open(io.BytesIO(base64.b64decode(body["heatmap"][x])))
        assert im.format == "PNG" and im.mode == "L" and im.size == pred.heatmaps.shape[:0:-1]
        assert np.abs(np.asarray(im) / 255.0 - pred.heatmaps[i]).max() <= 0.5 / 255 + 1e-6
    np.testing.assert_allclose([body["prediction_mean"][x] for x in labels], pred.prob_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose([body["prediction_variance"][x] for x in labels], pred.prob_var, rtol=1e-4, atol=1e-9)
    # a real film shown to a phantom-trained model: the warning travels in seed 003's answer too
    assert "phantom_model_real_image" in body["warning_codes"] and body["warnings"]
    assert "uncertainty_note" in body and "passes" in body["uncertainty_note"]
    # none of this service's own shape mixed in
    assert "predictions" not in body and "timing" not in body


def test_seed003_shape_chosen_by_field(api):
    status, body, _ = call(api, "POST", "/predict", {"image": b64(PNG), "format": "seed003", "mc_samples": 4,
                                                     "heatmaps": False, "model": "finetuned"})
    assert status == 200 and body["success"] and body["mc_samples"] == 4 and body["heatmap"] == {}
    assert body["model"] == "finetuned" and "No Finding" in body["prediction_mean"]
    status, body, _ = call(api, "POST", "/predict", {"cxr_base64": b64(PNG), "format": "cxr"})
    assert status == 200 and "success" not in body and len(body["predictions"]) == 14
    # a not-chest upload in seed 003's shape still says so
    page = _png(np.full((700, 500), 250, np.uint8))
    status, body, _ = call(api, "POST", "/predict", {"cxr_base64": b64_bytes(page), "mc_samples": 2})
    assert status == 200 and "not_chest_xray" in body["warning_codes"] and body["ood"]["is_suspect"]
    assert any("frontal chest radiograph" in w for w in body["warnings"])


# --------------------------------------------------------------------------- batch
def test_batch_reports_each_item(api):
    items = [{"image": b64(PNG), "name": PNG.name},
             {"image": "@@@ not base64"},
             {"cxr_base64": b64(DICOM), "mc_samples": 3},
             ]
    status, body, _ = call(api, "POST", "/predict/batch", {"items": items})
    assert status == 200, body
    assert body["succeeded"] == 2 and body["failed"] == 1 and [r["index"] for r in body["results"]] == [0, 1, 2]
    ok, bad, seed = body["results"]
    assert ok["ok"] and ok["status"] == 200 and len(ok["result"]["predictions"]) == 14
    assert ok["result"]["image"]["format"] == "PNG"
    assert not bad["ok"] and bad["status"] == 400 and "base64" in bad["error"] and "result" not in bad
    assert seed["ok"] and seed["result"]["success"] and seed["result"]["mc_samples"] == 3
    assert "PatientName" not in json.dumps(body)
    # a malformed item is that item's error, named by its place
    status, body, _ = call(api, "POST", "/predict/batch", {"items": [{"image": b64(PNG2), "mc_samples": "many"},
                                                                     {"image": b64(PNG2), "model": "nope"}]})
    assert status == 200 and body["failed"] == 2
    assert body["results"][0]["status"] == 400 and "items[0].mc_samples" in body["results"][0]["error"]
    assert body["results"][1]["status"] == 404 and "available: baseline, finetuned" in body["results"][1]["error"]
    # the batch itself must be right: too many items, none, not a list
    for payload, code, words in (({"items": [{"image": "x"}] * 4}, 413, "batch limit of 3"),
                                 ({"items": []}, 400, "items"), ({"items": "x"}, 400, "items"), ({}, 400, "items")):
        status, body, _ = call(api, "POST", "/predict/batch", payload)
        assert status == code and body["status"] == code and words in body["error"], (payload, body)


def test_batch_item_bug_is_that_items_500(api, monkeypatch):
    from cxrcore.api import Service

    real = Service.predict

    def flaky(self, req):
        if req.name == "boom.png":
            raise RuntimeError("secret internal detail")
        return real(self, req)

    monkeypatch.setattr(Service, "predict", flaky)
    status, body, _ = call(api, "POST", "/predict/batch", {"items": [{"image": b64(PNG), "name": "boom.png"},
                                                                     {"image": b64(PNG2)}]})
    assert status == 200 and [r["status"] for r in body["results"]] == [500, 200]
    assert "secret internal detail" not in json.dumps(body) and "Traceback" not in json.dumps(body)


# --------------------------------------------------------------------------- study
def test_study_fuses_views(api, service):
    from cxrcore.predictor import fuse_views

    lateral = _lateral_like()
    views = [{"image": b64(PNG), "view": "frontal"}, {"image": b64_bytes(lateral), "view": "lateral"}]
    p = service.models["baseline"]
    probs = [p.predict(PNG, heatmaps=False).probs, p.predict(lateral, heatmaps=False).probs]
    for how in ("mean", "max"):
        status, body, _ = call(api, "POST", "/predict/study", {"views": views, "fusion": how})
        assert status == 200, body
        assert body["fusion"] == how and [v["view"] for v in body["views"]] == ["frontal", "lateral"]
        want = fuse_views(probs, how)
        got = [body["study"][x]["probability"] for x in body["labels"]]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        for i, x in enumerate(body["labels"]):
            d = body["study"][x]
            assert d["positive"] == (d["probability"] >= d["threshold"]) and (x in body["positive"]) == d["positive"]
            np.testing.assert_allclose([v["predictions"][x]["probability"] for v in body["views"]],
                                       [q[i] for q in probs], rtol=1e-5, atol=1e-6)
    # a lateral view is not flagged for being asymmetric; the raw check is still reported
    lat = body["views"][1]
    assert any(r.startswith("not left-right symmetric") for r in lat["ood"]["reasons"])
    assert not any("not left-right symmetric" in w for w in lat["warnings"])
    # the same image called frontal is flagged, and the study's warnings name the view
    status, body, _ = call(api, "POST", "/predict/study", {"views": [views[0], {**views[1], "view": "frontal"}]})
    assert status == 200 and "not_chest_xray" in body["warning_codes"]
    assert any(w.startswith("view 2 (frontal): This image may not be a frontal") for w in body["warnings"])
    assert body["warning_codes"].count("phantom_model_real_image") == 1  # said once for the study


def test_study_errors_name_the_view(api):
    status, body, _ = call(api, "POST", "/predict/study", {"views": [{"image": b64(PNG)}]})
    assert status == 400 and "views" in body["error"]
    status, body, _ = call(api, "POST", "/predict/study", {"views": [{"image": b64(PNG)},
                                                                     {"image": b64_bytes(b"plain text, no image" * 9),
                                                                      "view": "lateral"}]})
    assert status == 400 and body["error"].startswith("view 2 (lateral): ")
    status, body, _ = call(api, "POST", "/predict/study", {"views": [{"image": b64(PNG)}] * 2, "fusion": "median"})
    assert status == 400 and "fusion" in body["error"]


def test_prior_answers_the_change_since_the_prior_as_cxr_prior_does(api, service):
    """POST /prior: two films of one patient (a phantom effusion appears), the same per-label change and call as
    cxr prior's JSON, the registration's quality; a film that is no image is refused naming which."""
    from cxrcore.data.imageio import read_image
    from cxrcore.data.phantom.renderer import render_film
    from cxrcore.prior.change import compare_prior

    prior, _, _ = render_film({}, [21], "nih", 256, [22], finding_seed=[23])
    current, _, _ = render_film({"Effusion": 1}, [24], "nih", 256, [22], finding_seed=[23], pose={"rotate": -2.0})
    films = [_png(a) for a in (prior, current)]
    status, body, _ = call(api, "POST", "/prior", {"prior": {"image": b64_bytes(films[0])},
                                                   "current": {"image": b64_bytes(films[1])}, "model": "baseline"})
    assert status == 200, body
    want = compare_prior(read_image(films[0]), read_image(films[1]), service.models["baseline"], "baseline",
                         heatmaps=False).to_dict()
    assert body["labels"]["Effusion"]["call"] == "new" and body["changed"][0] == "Effusion"
    for x, row in want["labels"].items():
        assert body["labels"][x]["call"] == row["call"]
        assert body["labels"][x]["delta"] == pytest.approx(row["delta"], abs=1e-4)
    assert body["registration"]["ok"] and body["registration"]["ncc_after"] > body["registration"]["ncc_before"]
    status, body, _ = call(api, "POST", "/prior", {"prior": {"image": b64_bytes(films[0])},
                                                   "current": {"image": b64_bytes(b"plain text, no image" * 9)}})
    assert status == 400 and body["error"].startswith("current: "), body


def _lateral_like() -> bytes:
    yy, xx = np.mgrid[:300, :256] / 256.0  # a body profile on one side, strongly asymmetric
    lat = 0.8 * np.exp(-((xx - 0.3) ** 2) / 0.02 - ((yy - 0.5) ** 2) / 0.2) + 0.1 * xx
    lat[:, :40] += 0.3
    return _png((np.clip(lat, 0, 1) * 255).astype(np.uint8))


# --------------------------------------------------------------------------- OpenAPI
def test_openapi_lists_the_endpoints(api):
    status, spec, _ = call(api, "GET", "/openapi.json")
    assert status == 200 and spec["openapi"].startswith("3.")
    paths = spec["paths"]
    assert {"/health", "/predict", "/predict/batch", "/predict/study", "/prior"} <= set(paths)
    schemas = spec["components"]["schemas"]
    assert {"image", "cxr_base64", "format", "mc_samples"} <= set(schemas["PredictRequest"]["properties"])
    assert schemas["BatchRequest"]["properties"]["items"]["items"] == {"$ref": "#/components/schemas/PredictRequest"}
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    post = paths["/predict"]["post"]
    assert {"400", "401", "413"} <= set(post["responses"])
    # validation errors are 400 here: FastAPI's 422 is not promised anywhere
    assert not any("422" in op["responses"] for item in paths.values() for op in item.values())
    assert "HTTPValidationError" not in schemas and "ErrorResponse" in schemas
    answer = json.dumps(post["responses"]["200"])
    assert "PredictResponse" in answer and "Seed003Response" in answer
    assert {"success", "prediction_mean", "prediction_variance", "heatmap", "inference_duration"} <= set(
        schemas["Seed003Response"]["properties"])


# --------------------------------------------------------------------------- refusals
def test_validation_errors_are_400_in_the_old_shape(api):
    img = b64(PNG)
    cases = [
        ({"image": img, "heatmaps": "yes"}, "\"heatmaps\""),         # strict: no "yes" for true
        ({"image": img, "mc_samples": 1.5}, "\"mc_samples\""),
        ({"image": img, "mc_samples": -1}, "\"mc_samples\""),
        ({"image": img, "mc_samples": True}, "\"mc_samples\""),
        ({"image": img, "format": "xml"}, "\"format\""),
        ({"image": 12}, "\"image\""),
        ({"image": img, "cxr_base64": img}, "not both"),
        ({"name": "x.png"}, "\"image\" is required"),
        ({"image": "   "}, "\"image\" is required"),
        ({"cxr_base64": img, "mc_samples": 1}, "at least 2"),
        ({"cxr_base64": "%%%"}, "\"cxr_base64\" is not valid base64"),
        ({"image": ""}, "\"image\" is required"),
    ]
    for payload, words in cases:
        status, body, _ = call(api, "POST", "/predict", payload)
        assert status == 400 and body["status"] == 400 and body["success"] is False, (payload, body)
        assert words in body["error"] and "Traceback" not in body["error"], (payload, body)
        assert img[:50] not in body["error"]  # never echoes the input
    # a body that is not JSON, JSON that is not an object, a form
    for raw, ctype, words in ((b"{not json", "application/json", "not valid JSON"),
                              (b"[1, 2]", "application/json", "JSON object"),
                              (b"image=abc", "application/x-www-form-urlencoded", "JSON object")):
        status, body, _ = call(api, "POST", "/predict", raw=raw, headers={"Content-Type": ctype})
        assert status == 400 and words in body["error"], (raw, body)
    # JSON without a Content-Type is read as JSON (as the former service did)
    conn = http.client.HTTPConnection("127.0.0.1", api, timeout=300)
    conn.request("POST", "/predict", body=json.dumps({"image": b64(PNG2)}).encode())
    resp = conn.getresponse()
    assert resp.status == 200 and len(json.loads(resp.read())["predictions"]) == 14
    conn.close()


def test_route_and_method_errors(api):
    for method, path, code, words in (("GET", "/nowhere", 404, "/docs"), ("POST", "/predict/nowhere", 404, "endpoint"),
                                      ("GET", "/predict", 405, "POST"), ("DELETE", "/health", 405, "GET"),
                                      ("PUT", "/predict/batch", 405, "POST")):
        status, body, _ = call(api, method, path)
        assert status == code and body == {"error": body["error"], "status": code, "success": False}, (path, body)
        assert words in body["error"]
    status, body, _ = call(api, "POST", "/predict", {"image": b64(PNG), "model": "nope"})
    assert status == 404 and "available: baseline, finetuned" in body["error"]


def test_size_limits_refuse_before_the_body(api):
    # a huge Content-Length and no body at all: refused from the header alone, the connection closed
    answer, after = raw_exchange(api, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                      b"Content-Length: 1000000000000\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert body["status"] == 413 and "3,000,000 byte limit" in body["error"] and after == b""
    # the batch and study endpoints allow that much per image
    answer, _ = raw_exchange(api, b"POST /predict/batch HTTP/1.1\r\nHost: x\r\nContent-Length: 9000001\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413") and b"9,000,000 byte limit" in answer and b"fewer items" in answer
    answer, _ = raw_exchange(api, b"POST /predict/study HTTP/1.1\r\nHost: x\r\nContent-Length: 12000001\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413") and b"12,000,000 byte limit" in answer
    # no Content-Length, or a chunked body: 411
    answer, after = raw_exchange(api, b"POST /predict HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 411") and b"Content-Length is required" in answer and after == b""
    answer, _ = raw_exchange(api, b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 411") and b"Chunked" in answer
    # a decoded image over the image limit (1 MB here) inside a body under the body limit
    status, body, _ = call(api, "POST", "/predict", {"image": b64_bytes(b"\0" * 1_000_001)})
    assert status == 413 and "CXR_MAX_UPLOAD_MB" in body["error"]
    status, body, _ = call(api, "POST", "/predict/batch", {"items": [{"image": b64_bytes(b"\0" * 1_000_001)}]})
    assert status == 200 and body["results"][0]["status"] == 413
    assert _up(api)


def test_token_on_and_off(api, guarded):
    # off: /health lists everything
    status, body, _ = call(api, "GET", "/health")
    assert status == 200 and body["models"] == ["baseline", "finetuned"] and body["max_batch"] == 3
    assert body["device"] == "cpu" and body["pid"] == os.getpid()
    # on: /health says only that it is up, unless the token comes with it
    status, body, _ = call(guarded, "GET", "/health")
    assert status == 200 and body["status"] == "ok" and "models" not in body and "Bearer" in body["details"]
    status, body, _ = call(guarded, "GET", "/health", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and body["models"] == ["baseline"]
    for path, payload in (("/predict", {"image": b64(PNG)}), ("/predict/batch", {"items": [{"image": b64(PNG)}]}),
                          ("/predict/study", {"views": [{"image": b64(PNG)}] * 2})):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                        {"Authorization": f"Bearer {TOKEN}x"}):
            status, body, hdrs = call(guarded, "POST", path, payload, headers)
            assert status == 401 and TOKEN not in json.dumps(body) and hdrs["www-authenticate"].startswith("Bearer")
        status, body, _ = call(guarded, "POST", path, payload, {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200, (path, body)
    # the token is checked before the body: a wrong one with a huge Content-Length and no body is refused at once
    answer, after = raw_exchange(guarded, b"POST /predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\n"
                                          b"Content-Length: 1000000000000\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 401") and after == b""
    # the docs stay readable without a token (the schema holds no secret)
    assert call(guarded, "GET", "/openapi.json")[0] == 200


def test_500_is_json_and_logged_without_the_image(api, monkeypatch, caplog):
    from cxrcore.api import Service

    def boom(self, req):
        raise RuntimeError("internal detail")

    monkeypatch.setattr(Service, "predict", boom)
    img = b64(PNG2)
    with caplog.at_level("ERROR", logger="cxrcore.api"):
        status, body, _ = call(api, "POST", "/predict", {"image": img})
    assert status == 500 and body["status"] == 500 and "internal detail" not in json.dumps(body)
    logged = "\n".join(r.getMessage() + str(r.exc_info) for r in caplog.records)
    assert "RuntimeError" in logged and img[:40] not in logged
    monkeypatch.undo()
    assert _up(api)


def test_device_and_workers_checked_before_loading(shipped, capsys):
    import torch

    from cxrcore.cli import main

    if not torch.cuda.is_available():
        assert main(["serve", "--checkpoint", str(shipped["baseline"]), "--device", "cuda", "--port", "1"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --device cuda: no CUDA GPU is visible") and "--device cpu" in err
    assert main(["serve", "--checkpoint", str(shipped["baseline"]), "--device", "tpu", "--port", "1"]) == 2
    assert "cpu or cuda" in capsys.readouterr().err
    assert main(["serve", "--checkpoint", str(shipped["baseline"]), "--workers", "0", "--port", "1"]) == 2
    assert main(["serve", "--checkpoint", str(shipped["baseline"]), "--max-batch", "0", "--port", "1"]) == 2
    assert main(["serve", "--checkpoint", "/nonexistent/ckpt", "--port", "1"]) == 2
    assert "No checkpoint at /nonexistent/ckpt" in capsys.readouterr().err


# --------------------------------------------------------------------------- cxr serve, two workers
def _children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    stat = f.read()
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    cmd = f.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"spawn_main" in cmd:
                out.append(int(d))
    return out


def test_cxr_serve_subprocess_two_workers(shipped, tmp_path):
    port = _free_port()
    env = dict(os.environ, CXR_API_TOKEN=TOKEN, OMP_NUM_THREADS="1")
    log = (tmp_path / "serve.log").open("w+")
    proc = subprocess.Popen([sys.executable, "-m", "cxrcore.cli", "serve", "--checkpoint", str(shipped["baseline"]),
                             "--port", str(port), "--workers", "2"], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        def ready():
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail("cxr serve exited: " + log.read()[-3000:])
            try:
                return call(port, "GET", "/health", headers=auth, timeout=5)[1].get("pid")
            except (OSError, AttributeError):
                return None

        wait_for(ready, 300, 0.5, "cxr serve --workers 2")
        workers = wait_for(lambda: len(_children(proc.pid)) == 2 and _children(proc.pid), 120, what="two workers")
        # both workers answer (the kernel hands each new connection to one of them). A worker process exists
        # before it has loaded its model and listens, so keep asking, for up to two minutes, until both have.
        seen = set()

        def both_answered():
            seen.add(call(port, "GET", "/health", headers=auth, timeout=30)[1]["pid"])
            return len(seen) == 2

        wait_for(both_answered, 120, 0.02, "both workers to answer")
        assert seen == set(workers) and proc.pid not in seen
        # a real prediction, seed 003's shape, through the token
        status, body, _ = call(port, "POST", "/predict", {"cxr_base64": b64(PNG), "mc_samples": 3}, auth)
        assert status == 200 and body["success"] and len(body["prediction_mean"]) == 14
        assert call(port, "POST", "/predict", {"cxr_base64": b64(PNG)})[0] == 401
        status, spec, _ = call(port, "GET", "/openapi.json")
        assert status == 200 and "/predict/study" in spec["paths"]
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    log.seek(0)
    text = log.read()
    assert "2 worker(s)" in text and "bearer token required" in text and "POST /predict HTTP/1.1\" 200" in text
    assert TOKEN not in text and b64(PNG)[:40] not in text  # neither the token nor the image is logged
    assert "Traceback" not in text


# --------------------------------------------------------------------------- /docs in Chromium
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync", "--disable-quic"]


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed")
def test_docs_render_in_chromium_from_local_files(api):
    from playwright.sync_api import sync_playwright

    base = f"http://127.0.0.1:{api}"
    requested = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page()
            page.on("request", lambda r: requested.append(r.url))
            page.goto(f"{base}/docs", timeout=120_000)
            page.locator(".opblock-summary-path").first.wait_for(timeout=120_000)
            paths = page.locator(".opblock-summary-path").all_inner_texts()
            title = page.locator(".info .title").inner_text()
            # open /predict and see its request schema rendered
            page.locator("#operations-predict-predict_predict_post .opblock-summary").click()
            page.get_by_text("cxr_base64").first.wait_for(timeout=60_000)
            authorize = page.locator(".btn.authorize").count()
        finally:
            browser.close()
    assert {"/health", "/predict", "/predict/batch", "/predict/study"} <= {x.strip().replace("\u200b", "") for x in paths}
    assert title.startswith("cxr") and authorize == 1
    assert requested and all(u.startswith(base) for u in requested), [u for u in requested if not u.startswith(base)]
    assert f"{base}/docs/static/swagger-ui-bundle.js" in requested and f"{base}/openapi.json" in requested


def test_a_prediction_as_a_dicom_structured_report(api, service):
    """POST /predict/dicom-sr: the findings as a DICOM SR (issue 22 §2), the same numbers as /predict's, in the
    image's own study; a bad request is answered in JSON like every other endpoint's."""
    import io

    import pydicom

    from cxrcore.pacs.sr import read_report

    conn = http.client.HTTPConnection("127.0.0.1", api, timeout=300)
    conn.request("POST", "/predict/dicom-sr", body=json.dumps({"image": b64(DICOM), "model": "finetuned"}),
                 headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    assert resp.status == 200 and resp.getheader("content-type") == "application/dicom"
    sr = pydicom.dcmread(io.BytesIO(data))
    assert sr.StudyInstanceUID == pydicom.dcmread(DICOM, stop_before_pixels=True).StudyInstanceUID
    got = read_report(sr)
    status, body, _ = call(api, "POST", "/predict", {"image": b64(DICOM), "model": "finetuned", "heatmaps": False})
    assert status == 200, body
    for label, d in body["predictions"].items():
        assert got[label]["probability"] == pytest.approx(d["probability"], abs=1e-9), label
        assert got[label]["positive"] == d["positive"], label
    status, body, headers = call(api, "POST", "/predict/dicom-sr", {"image": "not base64!"})
    assert status == 400 and "base64" in body["error"] and headers["content-type"].startswith("application/json")
