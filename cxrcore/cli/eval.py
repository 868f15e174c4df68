"""``cxr eval`` and ``cxr localize``: a checkpoint scored on a dataset."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import CXRError
from .common import CHECKPOINT_HELP, Command, bar


def cmd_localize(a) -> int:
    from ..eval.localize import localize_checkpoint

    report = localize_checkpoint(a.checkpoint, a.data, a.split, a.top_k, a.box_threshold,
                                 progress=None if a.json else bar("localize"), methods=a.cam_methods,
                                 gate=a.gate, faithfulness_n=a.faithfulness_images,
                                 max_images=a.max_images)
    if a.json:
        print(json.dumps(report.to_dict(boxes=a.boxes), indent=1))
        return 0
    print(f"{report.dataset}, split {report.split}: {len(report.results) // len(report.methods)} ground-truth boxes scored on "
          f"{report.n_images} images ({report.n_boxes_split} boxes in the split, {report.n_boxes_dataset} in the "
          f"dataset); top-{report.top_k} boxes per label at {report.box_threshold:g} x peak; {report.seconds:.1f} s")
    if report.skipped:
        print("labels the model does not have (not scored): "
              + ", ".join(f"{k} ({v})" for k, v in sorted(report.skipped.items())))
    if not report.results:
        print("no box to score")
        return 0
    print(report.table())
    print("accuracy = share of ground-truth boxes with a predicted box at IoU / IoBB >= T (IoBB = intersection over "
          "the predicted box's area, Wang et al. 2017); pointing game = heatmap peak inside one of the label's boxes on the "
          "image (Zhang et al. 2016); chance = mean area fraction of those boxes' union; pointing (box) = peak inside that very box")
    print()
    print(f"per label and CAM method ({report.gate_note()}; hit rates per image-label pair, as cheXlocalize):")
    print(report.methods_table())
    if report.faithfulness_n:
        from ..explain.faithfulness import HOW_TO_READ, TARGET_NOTE

        print(f"faithfulness: the first {report.faithfulness_n} images of each label (faith_n), scored on {TARGET_NOTE}. "
              + HOW_TO_READ)
    else:
        print("faithfulness (ROAD, deletion / insertion) not computed: add --faithfulness-images N")
    return 0


def cmd_eval(a) -> int:
    import time

    from .. import workspace
    from ..eval.evaluate import RATES, run_evaluation
    from ..eval.report import metrics_json, write_all

    result, data = run_evaluation(a.checkpoint, a.data, a.split, a.n_boot, a.compare, seed=a.seed,
                                  progress=None if a.json else bar("predict"), policy=a.policy, tta=a.tta,
                                  fuse=a.fuse, laterals=True if a.laterals else None, site=a.site)
    if a.out:
        out = Path(a.out)
    else:
        stem = f"{Path(a.checkpoint).resolve().name}-{result['dataset']}-{a.split}-{time.strftime('%Y%m%d-%H%M%S')}"
        out = workspace.sub("eval") / stem
    files = write_all(out, result, data)
    cal = result.get("calibration") or {}
    if a.save_calibration:
        if not cal.get("fitted"):
            raise CXRError(f"No temperatures to save: {cal.get('note', 'calibration was not fitted')}. "
                           "Use --split test (temperatures are fitted on the val split).")
        from ..eval.thresholds import save_temperatures

        # the CLI is the operator's tool (hosting.operator_user): in place, or the workspace copy of a shipped /
        # library model, as eval.thresholds.save_target says
        where = save_temperatures(a.checkpoint, {x: v["temperature"] for x, v in cal["per_label"].items()}, "val")
        print(f"saved per-label temperatures to {where / 'card.json'}", file=sys.stderr)
    if a.json:
        print(metrics_json(result))
        return 0

    def ci(m, d=3):
        if not m or m.get("value") is None:
            return "-"
        if m.get("low") is None:
            return f"{m['value']:.{d}f}"
        return f"{m['value']:.{d}f} [{m['low']:.{d}f}, {m['high']:.{d}f}]"

    b, s = result["bootstrap"], result["summary"]
    print(f"{result['model']} on {result['dataset']} ({a.split}): {result['n_images']} images, "
          f"{result['n_patients']} patients; {int(round(100 * (1 - b['alpha'])))}% CIs from {b['n_boot']} "
          f"patient-bootstrap replicates")
    print(f"  images: {result['split_description']}; uncertain labels scored as "
          f"{json.dumps(result['policy']) if not isinstance(result['policy'], str) else result['policy']} "
          f"({result['policy_source']})" + (f"; test-time augmentation {result['tta']}" if result.get("tta", "none") != "none"
                                            else "")
          + (f"; {result['n_images']} studies fused ({result['fusion']}) from {result['n_views']} views"
             if result.get("fusion", "none") != "none" else ""))
    head = f"  {'label':<27} {'n':>5} {'pos':>4}  {'AUROC [CI]':<22} {'AUPRC [CI]':<22} {'thr':>5} " \
           + " ".join(f"{r[:5]:>5}" for r in RATES) + f" {'ECE':>6} {'Brier':>6}"
    print(head)
    for x, m in result["per_label"].items():
        if not m["n"]:
            continue
        rates = " ".join(f"{m[r]['value']:>5.2f}" if m[r]["value"] is not None else f"{'-':>5}" for r in RATES)
        print(f"  {x[:27]:<27} {m['n']:>5} {m['positives']:>4}  {ci(m['auroc']):<22} {ci(m['auprc']):<22} "
              f"{m['threshold']:>5.2f} {rates} {m['ece']['value']:>6.3f} {m['brier']['value']:>6.3f}")
    print(f"  mean AUROC {ci(s['mean_auroc'])}, mean AUPRC {ci(s['mean_auprc'])} over "
          f"{len(s['labels_evaluated'])} labels with positives and negatives")
    print(f"  Hamming loss {ci(s['hamming_loss'])}, subset accuracy {ci(s['subset_accuracy'])} "
          f"(card thresholds, {s['multilabel_images']} images)")
    print(f"  samples-averaged precision {ci(s['samples_precision'])}, recall {ci(s['samples_recall'])}, "
          f"F1 {ci(s['samples_f1'])}")
    if s["labels_not_evaluated"]:
        print("  not evaluated: " + ", ".join(f"{k} ({v})" for k, v in s["labels_not_evaluated"].items()))
    for ref in (result.get("reference") or {}).values():  # published NIH-14 figures, for reference only
        shown = ", ".join(f"{x} {v:.3f}" for x, v in ref["auroc"].items() if v is not None)
        print(f"  published ({ref['title']}; {ref['split']}): {shown}")
    c = result["comparison"]
    if c:
        print(f"\ncompare: {c['compare_model']} - {result['model']} on {len(c['shared_labels'])} shared labels, "
              f"{c['n_images']} images")
        print(f"  {'label':<27} {'pos':>4} {'AUROC a':>7} {'AUROC b':>7}  {'dAUROC [paired CI]':<26} {'DeLong p':>8}")
        num = lambda v, fmt: "-" if v is None else format(v, fmt)  # noqa: E731
        for x, m in c["per_label"].items():
            p = m["delong"]["p"]
            print(f"  {x[:27]:<27} {m['positives']:>4} {num(m['auroc_checkpoint'], '.3f'):>7} "
                  f"{num(m['auroc_compare'], '.3f'):>7}  {ci(m['delta_auroc']):<26} "
                  f"{num(p, '.4f' if p is None or p >= 1e-4 else '.1e'):>8}")
        print(f"  mean dAUROC {ci(c['mean_delta_auroc'])}; wins {len(c['wins'])}, losses {len(c['losses'])}, "
              f"significant (DeLong p < {b['alpha']}): {len(c['significant_wins'])} wins, "
              f"{len(c['significant_losses'])} losses")
    if result.get("subgroups"):
        from ..eval.subgroups import gap_table

        gaps = gap_table(result["subgroups"]).head(3)
        if len(gaps):
            print("\nlargest subgroup AUROC gaps: " + "; ".join(
                f"{g.label} by {g.kind} {g.gap:.3f} ({g.lowest} {g.lowest_value:.3f} vs {g.highest} "
                f"{g.highest_value:.3f})" for g in gaps.itertuples()))
    print(f"\nwrote {', '.join(p.name for p in files.values())} to {out}")
    return 0


def _localize_flags(s) -> None:
    from ..eval.predictions import SPLIT_CHOICES

    s.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    s.add_argument("--data", required=True, help="dataset folder with boxes (NIH BBox_List_2017*.csv or phantom_boxes.csv)")
    s.add_argument("--split", choices=list(SPLIT_CHOICES), default="test",
                   help="patient split of the checkpoint's training (its seed, or the official split it trained "
                        "with); all for data the model never saw; official_test: the dataset's own test list")
    s.add_argument("--top-k", type=int, default=3, help="predicted boxes per label")
    s.add_argument("--box-threshold", type=float, default=0.5, help="heatmap threshold for boxes, fraction of the peak")
    s.add_argument("--json", action="store_true")
    s.add_argument("--boxes", action="store_true", help="include every ground-truth box's scores in the JSON")
    s.add_argument("--cam-methods", default="GradCAM",
                   help="CAM methods scored side by side, comma-separated (GradCAM, GradCAMPlusPlus, HiResCAM, "
                        "XGradCAM, LayerCAM, EigenCAM, ScoreCAM) or all; default GradCAM, the map the app shows")
    s.add_argument("--gate", default="threshold",
                   help="probability cut-off of the gated hit rate (cheXlocalize: no map when p is below it): "
                        "threshold = each label's decision threshold from the checkpoint card (default), or a number")
    s.add_argument("--max-images", type=int, default=None, metavar="N",
                   help="score only the first N images with boxes (sorted by id): other CAM methods cost a "
                        "pytorch-grad-cam pass per image and label on a CPU")
    s.add_argument("--faithfulness-images", type=int, default=0, metavar="N",
                   help="score each method's maps of the first N images of every label with ROAD and deletion / "
                        "insertion (about 60 forward passes each, a few seconds per image on a CPU; default 0 = off)")
    s.set_defaults(func=cmd_localize)


def _eval_flags(s) -> None:
    from ..eval.predictions import FUSIONS, SPLIT_CHOICES
    from ..eval.tta import TTA_MODES

    s.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    s.add_argument("--site", default=None, metavar="S",
                   help="the model as used at site S: its site profile's thresholds and temperatures (cxr site fit)")
    s.add_argument("--data", required=True, help="dataset folder (NIH or CheXpert layout)")
    s.add_argument("--split", choices=[x for x in SPLIT_CHOICES if x != "train"], default="test",  # no training images
                   help="the checkpoint's own patient-level split (hash, stratified or official, as it trained), "
                        "all images, or official_test: the dataset's own test list (NIH test_list.txt, CheXpert "
                        "valid.csv) whatever the model trained with")
    s.add_argument("--compare", help="a second checkpoint: ΔAUROC on the shared labels, paired CI, DeLong p")
    s.add_argument("--fuse", choices=list(FUSIONS), default="none",
                   help="study level: combine each study's views (frontal and lateral) by mean or max and score "
                        "studies (seed 003)")
    s.add_argument("--laterals", action="store_true",
                   help="keep lateral views (default: only when the model trained with them, from its card)")
    s.add_argument("--tta", choices=list(TTA_MODES), default="none",
                   help="test-time augmentation: mean probability over the image and its mirror (flip), or over "
                        "CheXNet's ten crops (tencrop)")
    s.add_argument("--policy", default=None,
                   help="uncertain (-1) labels: zeros, ones, ignore or a per-label mix; default: the model's own "
                        "training policy (from its card)")
    s.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates (patients resampled)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", action="store_true", help="print every metric with its CI as JSON")
    s.add_argument("--out", help="folder for predictions.csv, metrics.json, report.html (default: workspace eval/)")
    s.add_argument("--save-calibration", action="store_true",
                   help="store the per-label temperatures fitted on val in the card (calibrated probabilities)")
    s.set_defaults(func=cmd_eval)


LOCALIZE = Command("localize", "score heatmap boxes against ground-truth boxes (IoU, IoBB, pointing game, "
                               "gated hit rate), CAM methods side by side, optional ROAD / "
                               "deletion / insertion faithfulness", _localize_flags)
EVAL = Command("eval", "metrics with patient-bootstrap CIs, calibration, DeLong comparison; HTML report", _eval_flags)
