"""``cxr explain``: an LLM's review of a baseline / fine-tuned comparison."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .common import CHECKPOINT_HELP, Command


def cmd_explain(a) -> int:
    """Seed 002's review of a baseline / fine-tuned comparison by an LLM (OpenAI or any compatible server, from
    OPENAI_BASE_URL / OPENAI_API_KEY / CXR_LLM_MODEL): verdict, per-box judgement and explanation, validated."""
    from ..compare import compare
    from ..data.imageio import read_image
    from ..errors import ConfigError, LLMError
    from ..explain.llm import LLMConfig
    from ..explain.review import (PromptTemplate, classify_case, prompt_values, review_events, review_facts,
                                 review_record, save_review, verdict_check, with_heartbeat)
    from ..explain.visual import comparison_panel, png_bytes
    from ..predictor import Predictor

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


def _explain_flags(s) -> None:
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


EXPLAIN = Command("explain", "an LLM's review of a baseline / fine-tuned comparison (seed 002): verdict, "
                             "per-box judgement, explanation, validated against a JSON schema", _explain_flags)
