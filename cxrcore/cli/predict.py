"""``cxr predict``: one image, or the views of one study."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import CXRError
from .common import CHECKPOINT_HELP, Command, check_mc_samples, use_site


def cmd_predict(a) -> int:
    from ..errors import ConfigError
    from ..predictor import Predictor

    check_mc_samples(a.mc_samples)
    if len(a.image) > 1:
        if a.dicom_sr or a.dicom_heatmap:
            raise ConfigError("--dicom-sr and --dicom-heatmap report on one image: give one.")
        return _predict_study(a)
    a.image = a.image[0]
    from ..compare import compare, load_image, model_name
    from ..results import prediction_json, warnings

    predictor = Predictor(a.checkpoint)
    use_site(predictor, a.checkpoint, a.site)   # --site: the site profile's thresholds and temperatures
    model = model_name(a.checkpoint, predictor)
    image, raw = load_image(a.image)
    result = compare(image, {model: predictor}, Path(a.image).name, raw=raw, mc_samples=a.mc_samples, tta=a.tta)
    pred = result.predictions[model]
    if a.dicom_sr or a.dicom_heatmap:
        _write_dicom(a, pred, image, raw, model, predictor)
    if a.panel:
        from ..explain.visual import comparison_panel, png_bytes

        label = a.label or pred.top(1)[0][0]
        Path(a.panel).write_bytes(png_bytes(comparison_panel(image.pixels, {"model": pred}, label)))
    if a.json:
        print(json.dumps(prediction_json(result, model, heatmaps="values" if a.heatmaps else None, dicom_notes=True),
                         indent=1))
        return 0
    for text in warnings(result, model)[0]:  # before the numbers, where they are read
        print(f"WARNING: {text}")
    print(f"{Path(a.image).name}: {pred.cam_method}, heatmaps {pred.heatmaps.shape[1]}x{pred.heatmaps.shape[2]}, "
          f"{pred.seconds * 1000:.0f} ms; model trained on {pred.trained_on or 'not recorded'}")
    for note in pred.notes:
        print(f"note: {note}")
    if pred.site:
        print(f"site profile {pred.site['name']}: thresholds and temperatures fitted on {pred.site.get('fitted_on')} "
              f"({pred.site.get('n')} cases) for {len(pred.site.get('labels') or [])} label(s)")
    for i in sorted(range(len(pred.labels)), key=lambda i: -pred.probs[i]):
        x = pred.labels[i]
        mark = "POS" if pred.positive[i] else "   "
        spread = f" ± {pred.prob_std[i]:.3f}" if pred.prob_std is not None else ""
        boxes = ", ".join(f"[{b.x:.2f} {b.y:.2f} {b.w:.2f} {b.h:.2f}] {b.score:.2f}" for b in pred.boxes.get(x, [])[:2])
        print(f"  {mark} {x:<28} {pred.probs[i]:.3f}{spread}  (thr {pred.thresholds[i]:.2f})  {boxes}")
    if pred.mc:
        print(pred.mc["note"])
    return 0


def _write_dicom(a, pred, image, raw: bytes, model: str, predictor) -> None:
    """--dicom-sr / --dicom-heatmap: the results as DICOM objects referencing the image (cxrcore.pacs.sr)."""
    from ..errors import ConfigError
    from ..pacs.sr import ModelIdentity, heatmap_capture, source_of, structured_report, write

    header, in_pacs = source_of(raw, Path(a.image).name, pred.image_shape)
    ident = ModelIdentity.of(model, predictor.card)
    if a.dicom_sr:
        write(structured_report(pred, header, ident, has_pacs_source=in_pacs), a.dicom_sr)
    if a.dicom_heatmap:
        label = a.label or pred.top(1)[0][0]
        if label not in pred.labels:
            raise ConfigError(f"--label {label!r} is not one of the model's labels: {', '.join(pred.labels)}.")
        write(heatmap_capture(pred, label, image.pixels, header, ident), a.dicom_heatmap)
    if not in_pacs and not a.json:
        print("note: the image is not a DICOM: the DICOM results reference a generated study (no source in a PACS)")


def _predict_study(a) -> int:
    """Several views of one study (frontal and lateral): each view's probabilities and the study's, fused by
    mean or max (seed 003)."""
    from ..compare import compare, load_image, model_name, study
    from ..predictor import Predictor
    from ..results import study_json, warnings

    if a.fuse == "none":
        raise CXRError("Several images are the views of one study: say how to combine them with --fuse mean or max.")
    p = Predictor(a.checkpoint)
    use_site(p, a.checkpoint, a.site)
    model = model_name(a.checkpoint, p)
    views = []
    for x in a.image:
        image, raw = load_image(x)
        views.append(compare(image, {model: p}, Path(x).name, raw=raw, heatmaps=False, tta=a.tta))
    s = study(views, a.fuse)
    if a.json:
        print(json.dumps(study_json(s, model, files=[str(x) for x in a.image], dicom_notes=True), indent=1))
        return 0
    fused, preds = s.fused(model), [v.predictions[model] for v in views]
    for x, v in zip(a.image, views):
        for text in warnings(v, model)[0]:
            print(f"WARNING ({Path(x).name}): {text}")
    names = [Path(x).name[:14] for x in a.image]
    print(f"study of {len(a.image)} views, fused by {a.fuse}; model trained on {preds[0].trained_on or 'not recorded'}")
    print(f"  {'':3} {'label':<28} {'study':>6}  " + " ".join(f"{n:>14}" for n in names))
    thr = preds[0].thresholds
    for i in sorted(range(len(p.labels)), key=lambda i: -fused[i]):
        mark = "POS" if fused[i] >= thr[i] else "   "
        print(f"  {mark} {p.labels[i]:<28} {fused[i]:>6.3f}  " + " ".join(f"{q.probs[i]:>14.3f}" for q in preds))
    return 0


def _predict_flags(s) -> None:
    from ..eval.predictions import FUSIONS
    from ..eval.tta import TTA_MODES

    s.add_argument("image", nargs="+", help="an image; several: the views of one study (with --fuse)")
    s.add_argument("--fuse", choices=list(FUSIONS), default="none",
                   help="several views of one study (frontal and lateral): combine their probabilities")
    s.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    s.add_argument("--site", default=None, metavar="S",
                   help="the model as used at site S: its site profile's thresholds and temperatures (cxr site fit)")
    s.add_argument("--json", action="store_true")
    s.add_argument("--heatmaps", action="store_true", help="include heatmaps in the JSON")
    s.add_argument("--panel", help="also write a PNG panel with the overlay of --label (default: top label)")
    s.add_argument("--label", help="the label of --panel and --dicom-heatmap (default: the most probable)")
    s.add_argument("--dicom-sr", metavar="OUT.dcm",
                   help="also write the findings as a DICOM Structured Report (TID 1500) referencing the image "
                        "(a PNG or JPEG gets a generated study); not for diagnostic use")
    s.add_argument("--dicom-heatmap", metavar="OUT.dcm",
                   help="also write the heatmap of --label over the image as a DICOM secondary capture in the "
                        "image's study; not for diagnostic use")
    s.add_argument("--tta", choices=list(TTA_MODES), default="none",
                   help="test-time augmentation of the probabilities (heatmaps from the image as it is)")
    s.add_argument("--mc-samples", type=int, default=0,
                   help="Monte-Carlo dropout passes for a spread per label (0: off; at most 200)")
    s.set_defaults(func=cmd_predict)


PREDICT = Command("predict", "probabilities, Grad-CAM heatmaps and boxes for one image (or a study's views)",
                  _predict_flags)
