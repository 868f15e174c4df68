"""Seed 002's explanation (cxrcore.explain.review) against the local OpenAI-compatible stub on 127.0.0.1:
case types, the prompt template, structured output validated against the schema, the fallback for a server
without ``response_format``, invalid and slow answers, and no key anywhere."""
from __future__ import annotations

import base64
import json
import logging

import pytest

from cxrcore.compare import compare
from cxrcore.data.imageio import read_image
from cxrcore.errors import ConfigError, LLMError
from cxrcore.explain.llm import LLMConfig
from cxrcore.explain.review import (DEFAULT_CASE_INSTRUCTIONS, PromptTemplate, Review, classify_case,
                                    partial_explanation, prompt_values, review_events, review_facts, review_record,
                                    save_review, truth_for, validate_answer, verdict_check, with_heartbeat)
from cxrcore.explain.visual import comparison_panel, png_bytes
from cxrcore.predictor import Predictor

from conftest import FORMATS
from llm_stub import INVALID_ANSWER, StubLLM, review_answer, sent_facts

KEY = "sk-test-secret-123456"
LABEL = "Cardiomegaly"


@pytest.fixture(scope="module")
def comparison(shipped):
    image = read_image(FORMATS / "00000001_000.png")
    return compare(image, {"baseline": Predictor(shipped["baseline"]), "fine-tuned": Predictor(shipped["finetuned"])},
                   "00000001_000.png", truth=[LABEL])


def calls(comparison, label=LABEL):
    return {n: bool(p.positive[p.labels.index(label)]) for n, p in comparison.for_label(label).items()}


def request_for(comparison, present):
    """(panel PNG, facts, prompt, case) of ``LABEL`` with the ground truth ``present`` (None: unknown)."""
    preds = comparison.for_label(LABEL)
    case = classify_case(preds, LABEL, present)
    facts = review_facts(preds, LABEL, case)
    prompt = PromptTemplate().render(prompt_values(facts, case))
    return png_bytes(comparison_panel(comparison.image.pixels, preds, LABEL, comparison.truth)), facts, prompt, case


def run(panel, facts, prompt, config):
    return list(with_heartbeat(lambda stop: review_events(panel, facts, prompt, config, stop), interval=0.05))


def test_case_types_by_ground_truth_and_by_agreement(comparison):
    c = calls(comparison)
    preds = comparison.for_label(LABEL)
    both = set(c.values())
    if len(both) == 1:  # the two shipped models make the same call on this image
        call = both.pop()
        assert classify_case(preds, LABEL, call).name == "easy"
        hard = classify_case(preds, LABEL, not call)
        assert hard.name == "hard" and hard.basis == "ground truth" and hard.right == {"baseline": False, "fine-tuned": False}
        agree = classify_case(preds, LABEL, None)
        assert agree.name == "easy" and agree.basis == "agreement" and "agree" in agree.detail
    else:
        assert classify_case(preds, LABEL, True).name == classify_case(preds, LABEL, False).name == "average"
        assert classify_case(preds, LABEL, None).name == "average"
    # the same bucketing as the Evaluation page's case browser, label synonyms folded
    assert truth_for(["Cardiomegaly"], "cardiomegaly") is True and truth_for(["Effusion"], "Pleural Effusion") is True
    assert truth_for([], LABEL) is False and truth_for(None, LABEL) is None
    assert truth_for(["Edema"], LABEL, known={"Edema"}) is None  # not labelled for this image: unknown, not absent


def test_the_prompt_differs_by_case_type_and_the_template_is_checked(comparison):
    c = next(iter(calls(comparison).values()))
    prompts = {}
    for present in (c, not c, None):
        _, facts, prompt, case = request_for(comparison, present)
        prompts[(case.name, case.basis)] = prompt
        assert DEFAULT_CASE_INSTRUCTIONS[case.name][:40] in prompt
        assert "${" not in prompt and f'"{LABEL}"' in prompt
        assert ", ".join(f"{m}/{b['box_id']}" for m, e in facts["models"].items() for b in e["focus"]["boxes"]) in prompt
    assert len(set(prompts.values())) == 3
    hard = next(p for (name, _), p in prompts.items() if name == "hard")
    assert "what a reader should check" in hard and "decided by the ground truth" in hard
    assert "decided by the models' agreement" in prompts[("easy", "agreement")]
    # an edited template: placeholders substituted, unknown ones and stray dollars refused with a clear message
    _, facts, _, case = request_for(comparison, None)
    mine = PromptTemplate("Explain ${label} (${case_type}). ${case_instructions}", dict(DEFAULT_CASE_INSTRUCTIONS))
    assert mine.render(prompt_values(facts, case)).startswith(f"Explain {LABEL} (easy). Both models")
    assert not mine.is_default and PromptTemplate().is_default
    with pytest.raises(ConfigError, match=r"\$\{patient\}.*not a placeholder"):
        PromptTemplate("Tell me about ${patient}").render(prompt_values(facts, case))
    with pytest.raises(ConfigError, match=r"write \$\$"):
        PromptTemplate("It costs $ 5").check()
    with pytest.raises(ConfigError, match="hard cases are empty"):
        PromptTemplate(cases={**DEFAULT_CASE_INSTRUCTIONS, "hard": "  "}).check()


def test_a_hard_case_end_to_end_with_structured_output(comparison, caplog):
    c = next(iter(calls(comparison).values()))
    panel, facts, prompt, case = request_for(comparison, not c)
    assert case.name == "hard"
    caplog.set_level(logging.DEBUG)  # everything the openai client and httpx log, at every level
    with StubLLM(KEY, mode="review") as stub:
        events = run(panel, facts, prompt, LLMConfig(api_key=KEY, base_url=stub.base_url, model="stub-vl"))
    outcome = events[-1].outcome
    assert events[-1].kind == "done" and outcome.valid and outcome.mode == "structured" and not outcome.error
    assert outcome.review.verdict in ("IMPROVED", "WORSE", "NO CHANGE")
    assert "Hard case" in outcome.review.explanation
    # the explanation streamed before the answer was complete and validated
    texts = [e.text for e in events if e.kind == "text"]
    assert len(texts) > 3 and texts[-1] == outcome.review.explanation and texts[0] != texts[-1]
    rows = outcome.box_rows(facts)
    n_boxes = sum(len(e["focus"]["boxes"]) for e in facts["models"].values())
    assert len(rows) == n_boxes > 0 and all(isinstance(r["relevant"], bool) and r["why"] for r in rows)
    # what the server received: the structured output request, the prompt, the facts and the image
    body = stub.requests[0]["body"]
    assert body["stream"] is True
    fmt = body["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    assert set(fmt["json_schema"]["schema"]["required"]) == {"verdict", "boxes", "explanation"}
    assert fmt["json_schema"]["schema"]["properties"]["verdict"]["enum"] == ["IMPROVED", "WORSE", "NO CHANGE"]
    assert body["messages"][0]["content"] == prompt and "Both models are wrong" in prompt
    got = sent_facts(body)
    assert got == json.loads(json.dumps(facts))
    assert got["case"]["type"] == "hard" and got["ground_truth"] == {"label": LABEL, "present": not c}
    assert {m: e["focus"]["probability"] for m, e in got["models"].items()} == {
        m: round(float(p.probs[p.labels.index(LABEL)]), 3) for m, p in comparison.for_label(LABEL).items()}
    image = next(p for p in body["messages"][1]["content"] if p["type"] == "image_url")["image_url"]["url"]
    assert image.startswith("data:image/png;base64,") and base64.b64decode(image.split(",", 1)[1]) == panel
    # the key went only in the Authorization header: not in the body, not in any log record
    assert stub.requests[0]["auth"] == f"Bearer {KEY}" and KEY not in json.dumps(body)
    assert KEY not in caplog.text and caplog.records  # (the client did log the request)


def test_a_server_without_response_format_gets_the_schema_in_the_prompt(comparison):
    panel, facts, prompt, _ = request_for(comparison, None)
    with StubLLM(KEY, mode="review", reject_response_format=True) as stub:
        events = run(panel, facts, prompt, LLMConfig(api_key=KEY, base_url=stub.base_url))
    outcome = events[-1].outcome
    assert outcome.valid and outcome.mode == "prompt" and "did not accept structured output (HTTP 400" in outcome.fallback_reason
    assert [e.kind for e in events if e.kind == "fallback"] == ["fallback"]
    first, second = (r["body"] for r in stub.requests)
    assert "response_format" in first and "response_format" not in second
    system = second["messages"][0]["content"]
    assert system.startswith(prompt) and '"verdict"' in system and "one JSON object" in system


def test_an_invalid_answer_is_reported_and_never_a_verdict(comparison, tmp_path):
    panel, facts, prompt, case = request_for(comparison, None)
    config = LLMConfig(api_key=KEY, model="stub-vl")
    for rejects in (False, True):  # with structured output, and with the schema in the prompt
        with StubLLM(KEY, mode="invalid", reject_response_format=rejects) as stub:
            config.base_url = stub.base_url
            outcome = run(panel, facts, prompt, config)[-1].outcome
        assert not outcome.valid and outcome.review is None
        assert outcome.error.startswith("the model's answer did not follow the schema: ")
        assert "verdict" in outcome.error and "boxes.0.relevant" in outcome.error
        assert outcome.raw_text == INVALID_ANSWER
        saved = json.loads(save_review(review_record(
            comparison=comparison, label=LABEL, facts=facts, case=case, prompt=prompt, template=PromptTemplate(),
            config=config, outcome=outcome), tmp_path).read_text())
        assert saved["result"]["valid"] is False and "verdict" not in saved["result"]
        assert saved["result"]["raw_text_unvalidated"] == INVALID_ANSWER
        assert KEY not in json.dumps(saved)


def test_a_refusal_is_reported_and_never_a_verdict(comparison):
    panel, facts, prompt, _ = request_for(comparison, None)
    with StubLLM(KEY, mode="refuse") as stub:
        outcome = run(panel, facts, prompt, LLMConfig(api_key=KEY, base_url=stub.base_url))[-1].outcome
    assert not outcome.valid and outcome.error == "the model declined to answer: I can't help with that."


def test_validation_checks_the_answer_against_the_facts(comparison):
    _, facts, _, case = request_for(comparison, None)
    good = json.loads(review_answer({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "Structured facts (JSON):\n" + json.dumps(facts)}]}]}))
    assert validate_answer(json.dumps(good), facts).valid
    assert validate_answer("```json\n" + json.dumps(good) + "\n```", facts, "prompt").valid  # a fenced answer
    ghost = {**good, "boxes": good["boxes"] + [{**good["boxes"][0], "box_id": "B9"}]}
    out = validate_answer(json.dumps(ghost), facts)
    assert not out.valid and "/B9, which is not a box of the facts sent" in out.error
    assert good["boxes"]
    partial = {**good, "boxes": good["boxes"][:-1]}   # one box left unjudged
    out = validate_answer(json.dumps(partial), facts)
    assert out.valid and any("did not judge" in n for n in out.notes)
    assert not validate_answer(json.dumps({**good, "extra": 1}), facts).valid  # no field beyond the schema
    assert not validate_answer(json.dumps({**good, "explanation": " "}), facts).valid
    out = validate_answer("The fine-tuned model is better.", facts)
    assert not out.valid and "not a JSON object" in out.error
    strict = {**good, "boxes": [{**good["boxes"][0], "relevant": "true"}]}
    assert not validate_answer(json.dumps(strict), facts).valid  # "true" is not a boolean
    # the explanation is read out of a half-received answer
    assert partial_explanation('{"explanation": "Both models look at the lower') == "Both models look at the lower"
    assert partial_explanation('{"verdict": "IMP') is None and partial_explanation("Plain text") is None
    # a verdict that contradicts the ground truth in a one-right case is flagged
    from cxrcore.explain.review import CaseType

    one_right = CaseType("average", "ground truth", "", True, {"baseline": False, "fine-tuned": True})
    assert "contradicts" in verdict_check(Review.model_validate({**good, "verdict": "WORSE"}), one_right)
    assert verdict_check(Review.model_validate({**good, "verdict": "IMPROVED"}), one_right) is None


def test_slow_and_stalled_servers_time_out_with_a_clear_message(comparison):
    panel, facts, prompt, _ = request_for(comparison, None)

    def events(mode: str, message: str) -> list[str]:
        """The kinds of event a review from a StubLLM in ``mode`` gave before it failed with ``message``."""
        seen = []
        with StubLLM(KEY, mode=mode, delay=3) as stub, pytest.raises(LLMError, match=message) as err:
            for event in with_heartbeat(lambda stop: review_events(panel, facts, prompt, LLMConfig(
                    api_key=KEY, base_url=stub.base_url, timeout=1), stop), interval=0.05):
                seen.append(event.kind)
        assert KEY not in str(err.value)
        return seen

    assert "waiting" in events("slow", "did not answer within 1 s")  # progress while nothing came
    seen = events("stall", "stopped sending its answer|did not finish")
    assert "text" in seen and "done" not in seen  # part of the answer came, then nothing: no verdict


@pytest.mark.parametrize("mode,match", [("401", "rejected the API key"), ("garbage", "not a chat completion|no text")])
def test_server_errors_are_clear_and_never_show_the_key(comparison, mode, match):
    panel, facts, prompt, _ = request_for(comparison, None)
    with StubLLM(KEY, mode=mode) as stub:
        with pytest.raises(LLMError, match=match) as err:
            run(panel, facts, prompt, LLMConfig(api_key=KEY, base_url=stub.base_url))
    assert KEY not in str(err.value) and "sk-" not in str(err.value)
    with pytest.raises(LLMError, match="OPENAI_API_KEY"):
        run(panel, facts, prompt, LLMConfig(api_key=None))


def _cxr_explain(stub, tmp_path, *args):
    import os
    import subprocess
    import sys

    from conftest import REPO

    env = dict(os.environ, CXR_HOME=str(tmp_path / "home"), OPENAI_API_KEY=KEY, OPENAI_BASE_URL=stub.base_url)
    return subprocess.run([sys.executable, "-m", "cxrcore.cli", "explain", str(FORMATS / "00000001_000.png"),
                           "--baseline", str(REPO / "checkpoints" / "baseline"), "--finetuned",
                           str(REPO / "checkpoints" / "finetuned"), "--label", LABEL, *args],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=600)


class _Ran:
    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def _cxr_explain_here(stub, tmp_path, monkeypatch, capsys, *args) -> _Ran:
    """``cxr explain`` through cxr's main in this process, with the same settings as :func:`_cxr_explain`."""
    from conftest import REPO
    from cxrcore.cli import main

    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", stub.base_url)
    code = main(["explain", str(FORMATS / "00000001_000.png"), "--baseline", str(REPO / "checkpoints" / "baseline"),
                 "--finetuned", str(REPO / "checkpoints" / "finetuned"), "--label", LABEL, *args])
    out = capsys.readouterr()
    return _Ran(code, out.out, out.err)


def test_cli_explain_valid_invalid_and_slow(comparison, tmp_path, monkeypatch, capsys):
    """The first run through the entry point as a process, the others through cxr's main in this process."""
    c = next(iter(calls(comparison).values()))
    truth = "absent" if c else "present"  # both models wrong: a hard case
    with StubLLM(KEY, mode="review") as stub:
        r = _cxr_explain(stub, tmp_path, "--truth", truth)
    assert r.returncode == 0, r.stderr
    assert "hard case (decided by the ground truth)" in r.stderr and "verdict (fine-tuned vs baseline): " in r.stdout
    assert "Hard case" in r.stdout and " B1 " in r.stdout
    saved = list((tmp_path / "home" / "explanations").glob("*.json"))
    assert len(saved) == 1 and json.loads(saved[0].read_text())["result"]["valid"] is True
    assert stub.requests[0]["body"]["messages"][0]["content"].count("Both models are wrong") == 1
    with StubLLM(KEY, mode="invalid") as stub:
        r = _cxr_explain_here(stub, tmp_path, monkeypatch, capsys, "--json")
    assert r.returncode == 3 and "did not follow the schema" in r.stderr and "No verdict" in r.stderr
    assert "(unvalidated)" in r.stderr and "verdict (" not in r.stdout
    assert json.loads(r.stdout)["result"]["valid"] is False
    with StubLLM(KEY, mode="slow", delay=5) as stub:
        r = _cxr_explain_here(stub, tmp_path, monkeypatch, capsys, "--timeout", "3")
    assert r.returncode == 2 and "did not answer within 3 s" in r.stderr and "Traceback" not in r.stderr
    assert "waiting for" in r.stderr  # progress while it waited
    for out in (r.stdout, r.stderr):
        assert KEY not in out
    r = _cxr_explain_here(stub, tmp_path, monkeypatch, capsys, "--template", str(tmp_path / "missing.txt"))
    assert r.returncode == 2 and "Cannot read the prompt template" in r.stderr
