"""The ``cxr`` command. Errors a user can cause print one message and exit with status 2."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import CXRError


def _bar(desc: str):
    from tqdm import tqdm

    state = {"bar": None}

    def update(done: int, total: int) -> None:
        if state["bar"] is None:
            state["bar"] = tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True)
        bar = state["bar"]
        bar.total = total
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()
            state["bar"] = None

    return update


def _train_progress():
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def update(phase: str, done: int, total: int, info: dict) -> None:
        bar = bars.get(phase)
        if bar is None or bar.total != total:
            if bar is not None:
                bar.close()
            unit = "img" if phase == "cache" else "step"
            bar = bars[phase] = tqdm(total=total, desc=phase, unit=unit, dynamic_ncols=True)
        bar.n = done
        if "loss" in info:
            bar.set_postfix(epoch=info.get("epoch"), loss=f"{info['loss']:.3f}", ips=f"{info.get('images_per_s', 0):.0f}")
        bar.refresh()
        if done >= total:
            bar.close()
            bars.pop(phase, None)

    return update


def cmd_phantom(a) -> int:
    from .data.phantom import generate

    out = generate(a.out, a.n, domain=a.domain, size=a.size, seed=a.seed, workers=a.workers, progress=_bar("phantom"))
    print(f"wrote {a.n} {a.domain} phantom images to {out}")
    return 0


def _views(text):
    if text is None:
        return None
    views = [v.strip().upper() for v in str(text).split(",") if v.strip()]
    if not views:
        raise CXRError(f"--views needs view positions such as PA or PA,AP, not {text!r}.")
    return views


def _add_filter_flags(s, frontal_default: bool) -> None:
    g = s.add_argument_group("filters")
    g.add_argument("--frontal-only", action=argparse.BooleanOptionalAction, default=frontal_default,
                   help="keep frontal (PA/AP) images only" + (" (default)" if frontal_default else ""))
    g.add_argument("--views", help="keep only these view positions, comma-separated, e.g. PA or PA,AP")
    g.add_argument("--first-n-studies", type=int, help="keep each patient's first N studies (by study order)")
    g.add_argument("--age-min", type=float)
    g.add_argument("--age-max", type=float)
    g.add_argument("--sex", choices=["M", "F"])


def _train_config(a):
    """TrainConfig from the flags derived from its declaration (train/config.py), plus --output-stride,
    --init resolution and --set KEY=JSON for anything else."""
    from .train import config as train_config  # the module's TrainConfig, read now

    if not a.data:
        raise CXRError("cxr train needs --data DIR (an NIH- or CheXpert-style folder, or images + a CSV).")
    cfg = train_config.config_from_args(a, train_config.TrainConfig, data=str(Path(a.data).resolve()))
    if a.output_stride:
        cfg["arch_kwargs"] = {**cfg.get("arch_kwargs", {}), "output_stride": a.output_stride}
    if a.init:
        from .models.library import library_ref

        cfg["init"] = library_ref(a.init) or str(Path(a.init).resolve())  # xrv:<weights>: the library model as is
    for item in a.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise CXRError(f"--set takes KEY=VALUE (VALUE as JSON, e.g. --set augment_options='{{\"p\": 0.5}}'), not {item!r}.")
        try:
            cfg[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            cfg[key.strip()] = value  # a bare string
    return train_config.TrainConfig.from_dict(cfg)


def cmd_train(a) -> int:
    from dataclasses import asdict

    cfg = _train_config(a)
    cfg.validate()
    if not cfg.init:
        from .models.registry import check_architecture

        check_architecture(cfg.arch, cfg.pretrained, cfg.arch_kwargs)
    if a.backend == "slurm":
        from .jobs import dispatch

        opts = {k: v for k, v in (("partition", a.partition), ("time", a.time), ("mem", a.mem), ("cpus", a.cpus),
                                  ("account", a.account)) if v is not None}
        cfg.slurm = {**(cfg.slurm or {}), **opts}
        job = dispatch.submit(asdict(cfg), name=a.name or Path(a.data).name, backend="slurm",
                              cluster=a.slurm_conf)  # recorded as launched by the OS user
        print(f"submitted job {job.id} to Slurm as job {job.backend_id} (run folder {job.run_dir}); "
              f"watch it with `cxr jobs show {job.id}`")
        return 0
    if a.backend == "local" and a.background:
        from .jobs import dispatch

        job = dispatch.submit(asdict(cfg), name=a.name or Path(a.data).name)  # recorded as launched by the OS user
        print(f"submitted job {job.id} (run folder {job.run_dir}); watch it with `cxr jobs show {job.id}`")
        return 0
    from .train.trainer import train

    out = Path(a.out)
    if a.resume:
        from .train.state import state_path

        if state_path(out) is None:
            raise CXRError(f"{out} has no saved epoch to resume from; run without --resume to start it.")
    elif out.exists() and any(out.iterdir()):
        raise CXRError(f"The run folder {out} already exists and is not empty. Choose another --out, remove it, "
                       "or add --resume to continue it.")
    if cfg.nproc > 1:
        raise CXRError("--nproc > 1 runs data-parallel under torchrun: add --background (or --backend slurm), or "
                       "start `torchrun --nproc-per-node N -m cxrcore.train.worker RUN_DIR` yourself.")
    card = train(cfg, out, progress=_train_progress(), resume=a.resume)
    val = card.metrics.get("val", {}).get("mean_auroc")
    test = card.metrics.get("test", {}).get("mean_auroc")
    print(f"best epoch {card.training['best_epoch']}: val mean AUROC {val:.3f}"
          + (f", test mean AUROC {test:.3f}" if test is not None else "") + f"; checkpoint in {out / 'checkpoint'}")
    return 0


def cmd_predict(a) -> int:
    from .errors import ConfigError
    from .explain.uncertainty import MAX_SAMPLES
    from .predictor import Predictor

    if not 0 <= a.mc_samples <= MAX_SAMPLES:
        raise ConfigError(f"--mc-samples must be from 0 to {MAX_SAMPLES}, not {a.mc_samples}.")
    if len(a.image) > 1:
        return _predict_study(a)
    a.image = a.image[0]
    pred = Predictor(a.checkpoint).predict(a.image, heatmaps=True, mc_samples=a.mc_samples, tta=a.tta)
    if a.panel:
        from .explain.visual import comparison_panel, png_bytes
        from .data.imageio import read_image

        label = a.label or pred.top(1)[0][0]
        Path(a.panel).write_bytes(png_bytes(comparison_panel(read_image(a.image).pixels, {"model": pred}, label)))
    if a.json:
        print(json.dumps(pred.to_dict(heatmaps=a.heatmaps), indent=1))
        return 0
    for w in pred.warnings:  # before the numbers, where they are read
        print(f"WARNING: {w.text}")
    print(f"{Path(a.image).name}: {pred.cam_method}, heatmaps {pred.heatmaps.shape[1]}x{pred.heatmaps.shape[2]}, "
          f"{pred.seconds * 1000:.0f} ms; model trained on {pred.trained_on or 'not recorded'}")
    for note in pred.notes:
        print(f"note: {note}")
    for i in sorted(range(len(pred.labels)), key=lambda i: -pred.probs[i]):
        x = pred.labels[i]
        mark = "POS" if pred.positive[i] else "   "
        spread = f" ± {pred.prob_std[i]:.3f}" if pred.prob_std is not None else ""
        boxes = ", ".join(f"[{b.x:.2f} {b.y:.2f} {b.w:.2f} {b.h:.2f}] {b.score:.2f}" for b in pred.boxes.get(x, [])[:2])
        print(f"  {mark} {x:<28} {pred.probs[i]:.3f}{spread}  (thr {pred.thresholds[i]:.2f})  {boxes}")
    if pred.mc:
        print(pred.mc["note"])
    return 0


def _predict_study(a) -> int:
    """Several views of one study (frontal and lateral): each view's probabilities and the study's, fused by
    mean or max (seed 003)."""
    from .predictor import Predictor, fuse_views

    if a.fuse == "none":
        raise CXRError("Several images are the views of one study: say how to combine them with --fuse mean or max.")
    p = Predictor(a.checkpoint)
    preds = [p.predict(x, heatmaps=False, tta=a.tta) for x in a.image]
    fused = fuse_views([q.probs for q in preds], a.fuse)
    if a.json:
        print(json.dumps({"fusion": a.fuse, "labels": p.labels, "study": [float(v) for v in fused],
                          "views": [{"image": str(x), **q.to_dict(heatmaps=False)} for x, q in zip(a.image, preds)]},
                         indent=1))
        return 0
    for x, q in zip(a.image, preds):
        for w in q.warnings:
            print(f"WARNING ({Path(x).name}): {w.text}")
    names = [Path(x).name[:14] for x in a.image]
    print(f"study of {len(a.image)} views, fused by {a.fuse}; model trained on {preds[0].trained_on or 'not recorded'}")
    print(f"  {'':3} {'label':<28} {'study':>6}  " + " ".join(f"{n:>14}" for n in names))
    thr = preds[0].thresholds
    for i in sorted(range(len(p.labels)), key=lambda i: -fused[i]):
        mark = "POS" if fused[i] >= thr[i] else "   "
        print(f"  {mark} {p.labels[i]:<28} {fused[i]:>6.3f}  " + " ".join(f"{q.probs[i]:>14.3f}" for q in preds))
    return 0


def cmd_localize(a) -> int:
    from .eval.localize import localize_checkpoint

    report = localize_checkpoint(a.checkpoint, a.data, a.split, a.top_k, a.box_threshold,
                                 progress=None if a.json else _bar("localize"), methods=a.cam_methods,
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
        from .explain.faithfulness import HOW_TO_READ, TARGET_NOTE

        print(f"faithfulness: the first {report.faithfulness_n} images of each label (faith_n), scored on {TARGET_NOTE}. "
              + HOW_TO_READ)
    else:
        print("faithfulness (ROAD, deletion / insertion) not computed: add --faithfulness-images N")
    return 0


def cmd_explain(a) -> int:
    """Seed 002's review of a baseline / fine-tuned comparison by an LLM (OpenAI or any compatible server, from
    OPENAI_BASE_URL / OPENAI_API_KEY / CXR_LLM_MODEL): verdict, per-box judgement and explanation, validated."""
    from .compare import compare
    from .data.imageio import read_image
    from .errors import ConfigError, LLMError
    from .explain.llm import LLMConfig
    from .explain.review import (PromptTemplate, classify_case, prompt_values, review_events, review_facts,
                                 review_record, save_review, verdict_check, with_heartbeat)
    from .explain.visual import comparison_panel, png_bytes
    from .predictor import Predictor

    if not 1 <= a.timeout <= 3600:
        raise ConfigError(f"--timeout must be from 1 to 3600 seconds, not {a.timeout:g}.")
    template = PromptTemplate()
    if a.template:
        try:
            template.text = Path(a.template).read_text()
        except OSError as exc:
            raise ConfigError(f"Cannot read the prompt template {a.template}: {exc.strerror}.") from None
    raw = Path(a.image).read_bytes() if Path(a.image).is_file() else None
    if raw is None:
        raise ConfigError(f"{a.image} is not a file.")
    image = read_image(raw, Path(a.image).name)
    comp = compare(image, {"baseline": Predictor(a.baseline), "fine-tuned": Predictor(a.finetuned)},
                   Path(a.image).name, raw=raw)
    label = a.label
    if label is None:
        label = max(comp.labels(), key=lambda x: max(
            (float(p.probs[p.labels.index(comp.label_in(n, x))]) for n, p in comp.predictions.items()
             if comp.label_in(n, x)), default=0.0))
    found = next((x for x in comp.labels() if x.lower() == label.lower()), None)
    if found is None:
        raise ConfigError(f"Neither model has the label {label!r}; choose one of: {', '.join(comp.labels())}.")
    label = found
    preds = comp.for_label(label)
    case = classify_case(preds, label, {"present": True, "absent": False, "unknown": None}[a.truth])
    facts = review_facts(preds, label, case)
    prompt = template.render(prompt_values(facts, case))
    if a.show_prompt:
        print(prompt)
        return 0
    config = LLMConfig.from_env(model=a.model)
    config.timeout = float(a.timeout)
    panel = png_bytes(comparison_panel(image.pixels, preds, label))
    where = config.base_url or "the OpenAI API"
    print(f"{label}: {case.name} case ({case.basis_text}). {case.detail}", file=sys.stderr)
    outcome, last = None, 0.0
    for event in with_heartbeat(lambda stop: review_events(panel, facts, prompt, config, stop)):
        if event.kind == "waiting" and event.elapsed - last >= 2:
            last = event.elapsed
            print(f"waiting for {config.model} at {where}: {event.elapsed:.0f} s (gives up after "
                  f"{config.timeout:.0f} s)", file=sys.stderr)
        elif event.kind == "fallback":
            print(f"note: {event.text}", file=sys.stderr)
        elif event.kind == "done":
            outcome = event.outcome
    if outcome is None:
        raise LLMError(f"{where} gave no answer.")
    record = review_record(comparison=comp, label=label, facts=facts, case=case, prompt=prompt, template=template,
                           config=config, outcome=outcome, source="cxr explain")
    path = save_review(record, Path(a.out) if a.out else None)
    if a.json:
        print(json.dumps(record, indent=1))
    if not outcome.valid:
        print(f"error: {outcome.error[0].upper() + outcome.error[1:]} No verdict.", file=sys.stderr)
        print("the model's raw answer (unvalidated):\n" + outcome.raw_text, file=sys.stderr)
        print(f"saved to {path}", file=sys.stderr)
        return 3
    if not a.json:
        review = outcome.review
        print(f"verdict (fine-tuned vs baseline): {review.verdict}")
        note = verdict_check(review, case)
        if note:
            print(f"note: {note}")
        for row in outcome.box_rows(facts):
            yes = {True: "yes", False: "no", None: "-"}
            print(f"  {row['model']:<11} {row['box']:<3} {row['where']:<20} relevant {yes[row['relevant']]:<3} "
                  f"location {yes[row['consistent with finding location']]:<3} {row['why']}")
        for n in outcome.notes:
            print(f"note: {n}")
        print()
        print(review.explanation)
    print(f"saved to {path} ({outcome.seconds:.1f} s, {outcome.mode} output)",
          file=sys.stderr)
    return 0


def cmd_stats(a) -> int:
    from .data import stats
    from .data.readers import LABELS_ONLY, builtin_table, read_dataset

    from .data.filters import apply_filters

    index = (builtin_table(a.source[len("builtin:"):]) if a.source.startswith("builtin:")
             else read_dataset(a.source, a.format, check_files=LABELS_ONLY))  # a table without images: its labels
    n_before = len(index)
    index, report = apply_filters(index, frontal_only=a.frontal_only, views=_views(a.views),
                                  first_n_studies=a.first_n_studies, age_min=a.age_min, age_max=a.age_max, sex=a.sex,
                                  sample_n=a.sample_n, seed=a.seed)
    info = stats.summary(index)
    prev = stats.prevalence(index)
    if a.json:
        print(json.dumps({"summary": info, "filters": {"before": n_before, "removed": report, "after": len(index)},
                          "prevalence": json.loads(prev.reset_index().to_json(orient="records"))},
                         indent=1, default=str))
        return 0
    if report:
        print(f"filters: {n_before:,} images before; "
              + "; ".join(f"{name} removed {n:,}" for name, n in report.items()) + f"; {len(index):,} left")
    print(f"{info['name']} ({info['format']}): {info['images']:,} images, {info['patients']:,} patients, "
          f"{info['images_on_disk']:,} image files found on disk")
    for note in info.get("notes", []):
        print(f"  note: {note}")
    print(prev.round(2).to_string())
    return 0


def cmd_cache(a) -> int:
    from .data.cache import build_cache
    from .data.preprocess import Preprocess
    from .data.readers import read_dataset

    index = read_dataset(a.data, a.format)
    cache = build_cache(index, Preprocess(size=a.size, fit=a.fit), progress=_bar("cache"), workers=a.workers)
    print(f"cache of {len(cache):,} images at {a.size} px in {cache.folder}"
          + (f"; {len(cache.failed)} unreadable (left black, excluded from training)" if cache.failed else ""))
    return 0


def cmd_sweep(a) -> int:
    from .jobs import sweep

    if a.action == "start":
        from dataclasses import asdict

        if not a.space:
            raise CXRError("Give the options to vary with --space, e.g. --space 'lr = 1e-4 .. 1e-2 log' "
                           "--space 'image_size = 48, 64'.")
        cfg = _train_config(a)
        cfg.validate()
        space = sweep.parse_space(a.space)
        base = {k: v for k, v in asdict(cfg).items() if k != "sweep"}
        if a.backend == "slurm":
            opts = {k: v for k, v in (("partition", a.partition), ("time", a.time), ("mem", a.mem),
                                      ("cpus", a.cpus)) if v is not None}
            base["slurm"] = {**(base.get("slurm") or {}), **opts}
        spec = sweep.SweepSpec(name=a.name or f"sweep of {Path(a.data).name}", base=base, space=space,
                               sampler=a.search, n_trials=a.trials, parallel=a.parallel, metric=a.metric,
                               prune=not a.no_prune, prune_after=a.prune_after, seed=a.seed, backend=a.backend)
        sweep_id = sweep.create(spec)
        print(f"started sweep {sweep_id}: {spec.n_trials} trials, {spec.parallel} at a time, {spec.sampler} over "
              + "; ".join(f"{k} = {p.describe()}" for k, p in space.items())
              + f". Watch it with `cxr sweep show {sweep_id}` or on the Training page.")
        return 0
    if a.action == "list":
        rows = sweep.list_sweeps()
        if not rows:
            print("no sweeps yet")
        for r in rows:
            print(f"{r['id']}  {r['name']}  {r['trials']}/{r['planned']} trials  metric {r['metric']}"
                  + ("  (stopped)" if r["stopped"] else ""))
        return 0
    if not a.sweep:
        raise CXRError(f"`cxr sweep {a.action}` needs the sweep's id (see `cxr sweep list`).")
    if a.action == "stop":
        sweep.stop(a.sweep, cancel_running=a.cancel_running)
        print(f"sweep {a.sweep}: no new trials" + ("; its running trials were cancelled" if a.cancel_running else ""))
        return 0
    started = sweep.advance(a.sweep)
    table = sweep.results(a.sweep)
    if started:
        print(f"started trial job(s) {', '.join(started)}")
    if a.csv:
        table.to_csv(a.csv, index=False)
        print(f"wrote {a.csv}")
    print(table.to_string(index=False) if len(table) else "no trials yet")
    best = sweep.best_job(a.sweep)
    if best is not None:
        print(f"best trial: job {best.id} ({best.name}); checkpoint {Path(best.run_dir) / 'checkpoint'}")
    return 0


def cmd_combine(a) -> int:
    from .models.two_network import combine_checkpoints

    card = combine_checkpoints(a.disease, a.gate, a.out, mode=a.gate_mode, name=a.name or "")
    t = card.model["two_stage"]["gate_threshold"]
    print(f"combined two-network checkpoint in {a.out}: {len(card.labels) - 1} findings from {a.disease}, "
          f"gate {card.labels[-1]!r} from {a.gate} (threshold {t:.3f}, {a.gate_mode}); the other thresholds are the "
          "disease model's own: tune them on the Thresholds page for the combination")
    return 0


def cmd_zeroshot(a) -> int:
    """A zero-shot CLIP checkpoint with your labels, prompts and scoring (models/clip.py)."""
    from .labels import resolve_label_space
    from .models.clip import make_zero_shot

    templates = {}
    if a.prompts:
        try:
            templates = json.loads(Path(a.prompts).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CXRError(f"Could not read the prompts file {a.prompts} ({exc}); it is JSON: "
                           '{"present": [...], "absent": [...], "labels": {"Mass": {"present": [...], "absent": [...]}}}.')
        if not isinstance(templates, dict):
            raise CXRError(f"The prompts file {a.prompts} must hold a JSON object.")
    if a.present:
        templates["present"] = list(a.present)
    if a.absent:
        templates["absent"] = list(a.absent)
    labels = resolve_label_space(a.labels)
    out = make_zero_shot(a.model, a.out, labels=labels, scoring=a.scoring, templates=templates)
    print(f"zero-shot checkpoint of {a.model} in {out}: {len(labels)} labels, scoring {a.scoring} "
          "(prompts on the card; use it wherever a checkpoint is)")
    return 0


def cmd_demo(a) -> int:
    from .demo import build

    if a.action == "build":
        report = build(Path(a.out) if a.out else None, a.baseline_epochs, a.finetune_epochs, progress=_train_progress())
        return 0 if report else 1
    return 2


def cmd_jobs(a) -> int:
    from . import jobs
    from .hosting import owner_display
    from .jobs.store import JobStore

    store = JobStore()
    if a.action == "list":
        jobs.refresh_all(store)
        rows = store.list()
        if not rows:
            print("no jobs yet; start one with `cxr train ... --background` or from the Training page")
        for j in rows:
            where = f"{j.backend}:{j.backend_id}" if j.backend_id else j.backend
            print(f"{j.id}  {j.status:<10} {where:<14} {j.name}" + (f"  ({j.note})" if j.note and j.active else "")
                  + (f"  [by {owner_display(j.owner)}]" if j.owner else ""))
        return 0
    if not a.job:
        raise CXRError(f"`cxr jobs {a.action}` needs a job id; `cxr jobs list` shows them.")
    job = jobs.refresh(store.get(a.job), store)
    if a.action == "show":
        s = jobs.progress_summary(jobs.events(job))
        print(json.dumps({"id": job.id, "name": job.name, "status": job.status, "backend": job.backend,
                          "slurm_id": job.backend_id, "gpu_ids": job.gpu_ids, "note": job.note, "owner": job.owner,
                          "run_dir": str(job.run_dir), "error": job.error, "progress": {k: v for k, v in s.items()
                                                                   if not k.endswith(("curve", "curves", "auroc_history"))}},
                         indent=1, default=str))
    elif a.action == "logs":
        print(jobs.logs(job, a.lines))
    elif a.action == "cancel":
        done = jobs.cancel(job.id, store)  # the job's backend: a signal to a local runner, scancel for Slurm
        print(f"cancelled {job.id}" + (f" (Slurm job {done.backend_id})" if done.backend_id else ""))
    elif a.action == "resume":
        again = jobs.resume(job.id, store)
        print(f"resumed {again.id} from its last complete epoch ({again.status}); `cxr jobs show {again.id}`")
    return 0


def cmd_eval(a) -> int:
    import time

    from . import workspace
    from .eval.evaluate import RATES, run_evaluation
    from .eval.report import metrics_json, write_all

    result, data = run_evaluation(a.checkpoint, a.data, a.split, a.n_boot, a.compare, seed=a.seed,
                                  progress=None if a.json else _bar("predict"), policy=a.policy, tta=a.tta,
                                  fuse=a.fuse, laterals=True if a.laterals else None)
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
        from .eval.thresholds import save_temperatures

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
        from .eval.subgroups import gap_table

        gaps = gap_table(result["subgroups"]).head(3)
        if len(gaps):
            print("\nlargest subgroup AUROC gaps: " + "; ".join(
                f"{g.label} by {g.kind} {g.gap:.3f} ({g.lowest} {g.lowest_value:.3f} vs {g.highest} "
                f"{g.highest_value:.3f})" for g in gaps.itertuples()))
    print(f"\nwrote {', '.join(p.name for p in files.values())} to {out}")
    return 0


def cmd_serve(a) -> int:
    import logging.config
    import os

    from .api import ENV_TOKEN, LOG_CONFIG, MAX_BATCH, Server, ServeConfig, bind, check_device, serve_workers

    token = a.token or os.environ.get(ENV_TOKEN) or None
    if a.max_bytes is not None and a.max_bytes < 1:
        raise CXRError("--max-bytes must be positive.")
    if a.workers < 1:
        raise CXRError("--workers must be at least 1.")
    loopback = a.host in ("127.0.0.1", "localhost", "::1")
    if not token and not loopback and not a.insecure_no_token:
        raise CXRError(f"Refusing to serve on {a.host} without a bearer token: anyone who reaches the port could use "
                       "the models. Set --token or CXR_API_TOKEN (or pass --insecure-no-token on a network you "
                       "trust completely).")
    check_device(a.device)
    config = ServeConfig(list(a.checkpoint), max_bytes=a.max_bytes, device=a.device,
                         max_batch=a.max_batch if a.max_batch is not None else MAX_BATCH)
    # every model is loaded here first, so a bad --checkpoint is one clear error before any port is bound
    # (with --workers N each worker then loads its own copy)
    if token:
        os.environ[ENV_TOKEN] = token  # the workers' only way to the token; never written to CXR_API_CONFIG
    service = config.service()
    models = list(service.models)
    try:
        if a.workers == 1:
            server = Server(service, a.host, a.port, log_config=LOG_CONFIG)
            sock = server.socket
        else:
            del service
            sock = bind(a.host, a.port)
    except OSError as exc:
        raise CXRError(f"Cannot listen on {a.host}:{a.port}: {exc.strerror or exc}. Choose another --port.") from None
    host, port = sock.getsockname()[:2]
    logging.config.dictConfig(LOG_CONFIG)  # request lines and errors on stderr, never bodies or headers
    print(f"serving {', '.join(models)} on http://{host}:{port} (POST /predict, /predict/batch, /predict/study; "
          f"GET /health; docs at /docs) on {a.device}, {a.workers} worker(s); bearer token "
          f"{'required' if token else 'not set'}; Ctrl-C stops", flush=True)
    if not token and not loopback:
        print("warning: listening beyond this machine without a token (--insecure-no-token)", file=sys.stderr)
    try:
        if a.workers == 1:
            server.serve_forever()
        else:
            serve_workers(config, sock, a.workers)
    finally:
        sock.close()
    return 0


LIBRARY_HINT = "a library model by name: xrv:densenet121-res224-all|nih|pc|chex|rsna|mimic_nb|mimic_ch, xrv:resnet50-res512-all"
CHECKPOINT_HELP = f"a checkpoint folder, a run folder, or {LIBRARY_HINT} (weights from torchxrayvision's cache)"


def _slurm_flags(s, names) -> None:
    """--partition, --time, ... (conf: --slurm-conf): the slurm options as declared in cxrcore/jobs/config.py,
    where their forms are checked, for the CLI as for everyone."""
    from .jobs.config import SLURM_OPTIONS

    for name in names:
        o = SLURM_OPTIONS[name]
        s.add_argument("--slurm-conf" if name == "conf" else f"--{name}", type=int if o.types == (int,) else str,
                       help=f"slurm: {o.help}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cxr", description="Chest X-ray classifiers: data, training, explanation.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("phantom", help="write a procedural chest X-ray dataset in the NIH or CheXpert layout")
    s.add_argument("--out", required=True)
    s.add_argument("--n", type=int, default=2000)
    s.add_argument("--domain", choices=["nih", "chexpert"], default="nih")
    s.add_argument("--size", type=int, default=256)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--workers", type=int, default=2)
    s.set_defaults(func=cmd_phantom)

    s = sub.add_parser("train", help="fine-tune a backbone on a dataset folder",
                       description="Every training option below is declared once in cxrcore/train/config.py "
                                   "(TrainConfig); the Training page's form shows the same options.")
    from .train import config as train_config

    train_config.add_cli_flags(s, train_config.TrainConfig)
    s.add_argument("--output-stride", type=int, choices=[8, 16, 32],
                   help="shorthand for --arch-kwargs '{\"output_stride\": N}': dilate the last stage (ResNet/RegNet-"
                        "like timm backbones) for finer heatmaps; 16 doubles the grid")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any training option by name, VALUE as JSON (repeatable), e.g. --set augment_options='{\"p\":0.5}'")
    s.add_argument("--resume", action="store_true", help="foreground: continue --out from its last complete epoch")
    s.add_argument("--out", default="run", help="run folder (foreground runs)")
    s.add_argument("--backend", choices=["local", "slurm"], default="local",
                   help="local: this machine (foreground, or detached with --background); slurm: submit with sbatch")
    _slurm_flags(s, ("partition", "time", "mem", "cpus", "account", "conf"))
    s.add_argument("--background", action="store_true", help="run as a detached job (see `cxr jobs`)")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("sweep", help="hyperparameter sweeps: many training jobs over ranges of options (Optuna)",
                       description="start: the training options below are the base of every trial (as for "
                                   "`cxr train`); --space lines name what varies. show: the trials table (and "
                                   "starts due trials); list; stop.")
    s.add_argument("action", choices=["start", "list", "show", "stop"])
    s.add_argument("sweep", nargs="?", help="show / stop: the sweep's id")
    train_config.add_cli_flags(s, train_config.TrainConfig)
    s.add_argument("--output-stride", type=int, choices=[8, 16, 32], help="as for `cxr train`")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="as for `cxr train`")
    s.add_argument("--space", action="append", metavar="'OPTION = LOW .. HIGH [log]' | 'OPTION = V1, V2'",
                   help="an option to vary (repeatable): a range (random / TPE) or listed values (any sampler)")
    s.add_argument("--search", choices=["grid", "random", "tpe"], default="tpe",
                   help="how trials are chosen: grid (every combination of listed values), random, or tpe "
                        "(Optuna's TPE sampler, default); --sampler is the training option (shuffle / weighted)")
    s.add_argument("--trials", type=int, default=8, help="how many trials (a grid stops at its size)")
    s.add_argument("--parallel", type=int, default=2, help="how many trials run at once")
    s.add_argument("--metric", choices=["auroc", "loss"], default="auroc",
                   help="what a trial is judged on: best validation mean AUROC, or validation loss")
    s.add_argument("--no-prune", action="store_true", help="never stop a trial early (default: Optuna's median "
                                                            "pruner on each epoch's validation metric)")
    s.add_argument("--prune-after", type=int, default=2, help="completed trials before any trial is pruned")
    s.add_argument("--backend", choices=["local", "slurm"], default="local")
    _slurm_flags(s, ("partition", "time", "mem", "cpus"))
    s.add_argument("--csv", help="show: also write the trials table to this CSV file")
    s.add_argument("--cancel-running", action="store_true", help="stop: also cancel the trials at work")
    s.set_defaults(func=cmd_sweep)

    s = sub.add_parser("predict", help="probabilities, Grad-CAM heatmaps and boxes for one image (or a study's views)")
    s.add_argument("image", nargs="+", help="an image; several: the views of one study (with --fuse)")
    s.add_argument("--fuse", choices=["none", "mean", "max"], default="none",
                   help="several views of one study (frontal and lateral): combine their probabilities")
    s.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    s.add_argument("--json", action="store_true")
    s.add_argument("--heatmaps", action="store_true", help="include heatmaps in the JSON")
    s.add_argument("--panel", help="also write a PNG panel with the overlay of --label (default: top label)")
    s.add_argument("--label")
    s.add_argument("--tta", choices=["none", "flip", "tencrop"], default="none",
                   help="test-time augmentation of the probabilities (heatmaps from the image as it is)")
    s.add_argument("--mc-samples", type=int, default=0,
                   help="Monte-Carlo dropout passes for a spread per label (0: off; at most 200)")
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("localize", help="score heatmap boxes against ground-truth boxes (IoU, IoBB, pointing game, "
                                                "gated hit rate), CAM methods side by side, optional ROAD / "
                                                "deletion / insertion faithfulness")
    s.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    s.add_argument("--data", required=True, help="dataset folder with boxes (NIH BBox_List_2017*.csv or phantom_boxes.csv)")
    s.add_argument("--split", choices=["test", "val", "train", "all", "official_test"], default="test",
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

    s = sub.add_parser("explain", help="an LLM's review of a baseline / fine-tuned comparison (seed 002): verdict, "
                                       "per-box judgement, explanation, validated against a JSON schema")
    s.add_argument("image")
    s.add_argument("--baseline", required=True, help=CHECKPOINT_HELP)
    s.add_argument("--finetuned", required=True, help=CHECKPOINT_HELP)
    s.add_argument("--label", help="the label to explain (default: the most probable)")
    s.add_argument("--truth", choices=["unknown", "present", "absent"], default="unknown",
                   help="the label's ground truth, when known: it decides the case type (easy / average / hard); "
                        "unknown: the models' agreement decides")
    s.add_argument("--template", help="a text file with your prompt template (placeholders as ${label}; see README)")
    s.add_argument("--show-prompt", action="store_true", help="print the prompt that would be sent, send nothing")
    s.add_argument("--model", help="the LLM (default: CXR_LLM_MODEL or gpt-4o-mini)")
    s.add_argument("--timeout", type=float, default=60.0, help="give up after this many seconds")
    s.add_argument("--json", action="store_true", help="print the saved record (comparison, prompt, result) as JSON")
    s.add_argument("--out", help="folder for the saved record (default: the workspace's explanations/)")
    s.set_defaults(func=cmd_explain)

    s = sub.add_parser("stats", help="label statistics of a dataset folder or a builtin table")
    s.add_argument("source", help="a dataset folder, or builtin:nih / builtin:chexpert (full tables in torchxrayvision)")
    s.add_argument("--format", choices=["auto", "nih", "chexpert"], default="auto")
    s.add_argument("--json", action="store_true")
    _add_filter_flags(s, frontal_default=False)
    s.add_argument("--sample-n", type=int, help="random sample of this many images, after the filters")
    s.add_argument("--seed", type=int, default=0, help="seed of --sample-n")
    s.set_defaults(func=cmd_stats)

    s = sub.add_parser("cache", help="build the uint8 image cache training reads (once per dataset and size)")
    s.add_argument("data")
    s.add_argument("--size", type=int, default=160)
    s.add_argument("--fit", choices=["pad", "crop"], default="pad")
    s.add_argument("--format", choices=["auto", "nih", "chexpert"], default="auto")
    s.add_argument("--workers", type=int, default=2)
    s.set_defaults(func=cmd_cache)

    s = sub.add_parser("combine", help="one two-stage model from a disease checkpoint and a one-label gate checkpoint")
    s.add_argument("--disease", required=True, help="checkpoint (or run folder) of the disease model")
    s.add_argument("--gate", required=True, help="checkpoint (or run folder) of the binary gate model (one label)")
    s.add_argument("--out", required=True, help="folder for the combined checkpoint")
    s.add_argument("--gate-mode", choices=["soft", "hard"], default="soft",
                   help="below the gate: soft scales a finding by the gate's probability, hard reports 0")
    s.add_argument("--name", help="the combined model's name")
    s.set_defaults(func=cmd_combine)

    s = sub.add_parser("zeroshot", help="a zero-shot CLIP checkpoint (clip:<model>/<tag>) with your labels and prompts")
    s.add_argument("model", help="clip:<open_clip model>/<tag>, clip:hf-hub:<org>/<repo> or clip:local-dir:<folder>")
    s.add_argument("--out", required=True, help="folder for the checkpoint")
    s.add_argument("--labels", default="nih14", help="nih14, chexpert14, chexpert5 or a comma-separated list")
    s.add_argument("--present", action="append", help="a 'present' template with {label} (repeat for several)")
    s.add_argument("--absent", action="append", help="an 'absent' template with {label} (repeat for several)")
    s.add_argument("--prompts", help="JSON file: present / absent templates and per-label prompts")
    s.add_argument("--scoring", choices=["softmax", "minmax"], default="softmax",
                   help="softmax over each (present, absent) pair with CLIP's logit scale, or min-max over the "
                        "image's labels (seed 002)")
    s.set_defaults(func=cmd_zeroshot)

    s = sub.add_parser("demo", help="build the shipped demo checkpoints")
    s.add_argument("action", choices=["build"])
    s.add_argument("--out", help="default: the repository's checkpoints/")
    s.add_argument("--baseline-epochs", type=int, default=None, help="default: cxrcore.demo.BASELINE_EPOCHS")
    s.add_argument("--finetune-epochs", type=int, default=None, help="default: cxrcore.demo.FINETUNE_EPOCHS")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("jobs", help="list, inspect, cancel and resume background training jobs")
    s.add_argument("action", choices=["list", "show", "logs", "cancel", "resume"])
    s.add_argument("job", nargs="?")
    s.add_argument("--lines", type=int, default=40)
    s.set_defaults(func=cmd_jobs)

    s = sub.add_parser("eval", help="metrics with patient-bootstrap CIs, calibration, DeLong comparison; HTML report")
    s.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    s.add_argument("--data", required=True, help="dataset folder (NIH or CheXpert layout)")
    s.add_argument("--split", choices=["test", "val", "all", "official_test"], default="test",
                   help="the checkpoint's own patient-level split (hash, stratified or official, as it trained), "
                        "all images, or official_test: the dataset's own test list (NIH test_list.txt, CheXpert "
                        "valid.csv) whatever the model trained with")
    s.add_argument("--compare", help="a second checkpoint: ΔAUROC on the shared labels, paired CI, DeLong p")
    s.add_argument("--fuse", choices=["none", "mean", "max"], default="none",
                   help="study level: combine each study's views (frontal and lateral) by mean or max and score "
                        "studies (seed 003)")
    s.add_argument("--laterals", action="store_true",
                   help="keep lateral views (default: only when the model trained with them, from its card)")
    s.add_argument("--tta", choices=["none", "flip", "tencrop"], default="none",
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

    s = sub.add_parser("serve", help="JSON REST API on FastAPI/uvicorn: POST /predict (also seed 003's cxr_base64), "
                                     "/predict/batch, /predict/study; GET /health; OpenAPI at /docs")
    s.add_argument("--checkpoint", required=True, action="append", help="a checkpoint (or " + LIBRARY_HINT + ") to serve; repeat for more")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--token", help="require 'Authorization: Bearer TOKEN' on /predict (default: env CXR_API_TOKEN)")
    s.add_argument("--max-bytes", type=int, default=None,
                   help="largest request body accepted (default: an image of CXR_MAX_UPLOAD_MB, default 32 MB, "
                        "base64-encoded, plus 64 KiB)")
    s.add_argument("--insecure-no-token", action="store_true",
                   help="allow --host beyond 127.0.0.1 without a token (refused otherwise)")
    s.add_argument("--workers", type=int, default=1,
                   help="uvicorn worker processes, each with its own copy of the models (default 1)")
    s.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N); cuda is refused when no GPU is visible")
    s.add_argument("--max-batch", type=int, default=None,
                   help="most images in one /predict/batch request (default 8, cxrcore.api.MAX_BATCH; the batch's "
                        "body may be that many times --max-bytes)")
    s.set_defaults(func=cmd_serve)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CXRError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
