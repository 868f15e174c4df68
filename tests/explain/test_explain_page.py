"""Streamlit AppTest runs of the Explain page: the written summary without a key, a local OpenAI-compatible
server (streamed, invalid answers, the editable prompt), and Compare handing a hard case to Explain."""
from __future__ import annotations

import json
import re

import pytest
from streamlit.testing.v1 import AppTest

from conftest import app_page as page, no_exception
from llm_stub import StubLLM


def test_explain_without_a_key_gives_a_written_summary(app_env, shipped, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    at = page("explain").run()
    no_exception(at)
    at.button(key="explain_sample").click().run()
    no_exception(at)
    assert any("OPENAI_API_KEY" in w.value for w in at.warning)
    assert any("Summary for" in m.value for m in at.markdown)
    # the written summary follows the ground truth set on the page, not only the data's (issue 20)
    radio = next(r for r in at.radio if r.label.startswith("Ground truth of"))
    for chosen in ("absent", "present") if radio.value == "present" else ("present", "absent"):
        radio.set_value(chosen).run()
        no_exception(at)
        radio = next(r for r in at.radio if r.label.startswith("Ground truth of"))
        shown = next(m.value for m in at.markdown if "Case type:" in m.value)
        case = re.search(r"\*\*Case type: (\w+)\*\*", shown).group(1)
        summary = next(m.value for m in at.markdown if "Summary for" in m.value).replace("\\", "")
        assert f" {chosen}; case type: {case} (by ground truth)" in summary, (chosen, summary)
    radio.set_value("unknown").run()
    summary = next(m.value for m in at.markdown if "Summary for" in m.value).replace("\\", "")
    assert " not known; case type: " in summary and "(by agreement)" in summary


def explain_a_sample(stub, monkeypatch) -> AppTest:
    """The Explain page on a held-out phantom sample, the LLM settings pointing at ``stub`` with its key."""
    monkeypatch.setenv("OPENAI_API_KEY", stub.key)
    monkeypatch.setenv("OPENAI_BASE_URL", stub.base_url)
    at = page("explain").run()
    at.button(key="explain_sample").click().run()
    no_exception(at)
    return at


def test_explain_streams_from_a_local_server(app_env, shipped, monkeypatch):
    key = "sk-test-secret-123456"
    with StubLLM(key, mode="review") as stub:
        at = explain_a_sample(stub, monkeypatch)
        at.button(key="explain_go").click().run()
        no_exception(at)
        assert len(stub.requests) == 1
        shown = " ".join(m.value for m in at.markdown)
        assert "case for" in shown and "-badge[" in shown
        everything = " ".join(str(e.value) for e in at.main if hasattr(e, "value"))
        assert key not in everything


def compare_then_explain(stub, monkeypatch):
    """Compare a held-out phantom image (ground truth known), then open Explain on a label both models get
    wrong (a hard case). Returns the AppTest and the label."""
    from cxrcore.explain.review import classify_case, truth_for

    monkeypatch.setenv("OPENAI_API_KEY", stub.key)
    monkeypatch.setenv("OPENAI_BASE_URL", stub.base_url)
    at = page("compare").run()
    at.toggle(key="compare_mc").set_value(False)
    at.radio(key="compare_source").set_value("A held-out phantom test image (ground truth known)").run()
    no_exception(at)
    for option in at.selectbox(key="compare_sample").options:
        at.selectbox(key="compare_sample").set_value(option).run()
        no_exception(at)
        comp = at.session_state["explain_handoff"].comparison  # ui.handoff.KEY
        hard = [x for x in comp.labels() if all(comp.label_in(n, x) for n in comp.predictions)
                and classify_case(comp.for_label(x), x, truth_for(comp.truth, x)).name == "hard"]
        if hard:
            break
    else:
        pytest.fail("no phantom test image has a label both shipped models get wrong")
    at.switch_page("views/explain.py").run()
    no_exception(at)
    at.selectbox(key="explain_label").set_value(hard[0]).run()
    no_exception(at)
    return at, hard[0], comp


def test_compare_then_explain_a_hard_case_gives_verdict_and_box_table(app_env, shipped, monkeypatch):
    with StubLLM("sk-test-secret-123456", mode="review") as stub:
        at, label, comp = compare_then_explain(stub, monkeypatch)
        assert any("Case type: hard" in m.value and "decided by the ground truth" in m.value for m in at.markdown)
        assert at.radio(key=f"explain_truth_{comp.image_hash}_{label}").value == (
            "present" if label in comp.truth else "absent")
        prompt = next(c.value for c in at.code if "Both models are wrong" in c.value)  # the prompt as sent
        assert 'baseline model "baseline (shipped demo)"' in prompt  # the models as picked on Compare
        assert any("Sent from the Compare page" in c.value for c in at.caption)
        before = set((app_env / "explanations").glob("*.json")) if (app_env / "explanations").exists() else set()
        at.button(key="explain_go").click().run()
        no_exception(at)
        assert len(stub.requests) == 1 and stub.requests[0]["body"]["messages"][0]["content"] == prompt
        shown = " ".join(m.value for m in at.markdown)
        assert "-badge[" in shown and "Verdict" in shown and "Hard case" in shown
        table = next(d.value for d in at.dataframe if "relevant" in d.value.columns)
        facts = json.loads(stub.requests[0]["body"]["messages"][1]["content"][0]["text"].split("\n", 1)[1])
        assert len(table) == sum(len(e["focus"]["boxes"]) for e in facts["models"].values()) > 0
        assert set(table["model"]) <= {"baseline", "fine-tuned"} and table["why"].str.len().gt(0).all()
        # saved with the comparison in the workspace, as JSON
        saved = set((app_env / "explanations").glob("*.json")) - before
        assert len(saved) == 1
        record = json.loads(saved.pop().read_text())
        assert record["label"] == label and record["case"]["case_type"] == "hard" and record["result"]["valid"]
        assert record["result"]["verdict"] in ("IMPROVED", "WORSE", "NO CHANGE")
        assert record["image"]["sha256_16"] == comp.image_hash and record["prompt"]["sent"] == prompt
        everything = " ".join(str(e.value) for e in at.main if hasattr(e, "value"))
        assert stub.key not in everything and stub.key not in json.dumps(record)
        # the result stays on a rerun (no second request)
        at.run()
        assert len(stub.requests) == 1 and any("-badge[" in m.value for m in at.markdown)


def test_explain_reports_an_invalid_answer_and_shows_no_verdict(app_env, shipped, monkeypatch):
    with StubLLM("sk-test-secret-123456", mode="invalid") as stub:
        at, label, _ = compare_then_explain(stub, monkeypatch)
        at.button(key="explain_go").click().run()
        no_exception(at)
        assert any("did not follow the schema" in e.value and "No verdict is shown" in e.value for e in at.error)
        shown = " ".join(m.value for m in at.markdown)
        assert "-badge[" not in shown and "Verdict" not in shown
        assert not [d for d in at.dataframe if "relevant" in d.value.columns]
        assert any("MUCH BETTER" in c.value for c in at.code)  # the raw answer, under "unvalidated"
        assert any("unvalidated" in e.label for e in at.expander)


def test_explain_prompt_template_is_editable_and_resets(app_env, shipped, monkeypatch):
    with StubLLM("sk-test-secret-123456", mode="review", reject_response_format=True) as stub:
        at, label, _ = compare_then_explain(stub, monkeypatch)
        area(at, "Template").set_value("Review ${label}: ${case_instructions}").run()
        no_exception(at)
        assert any(c.value.startswith(f"Review {label}: Both models are wrong") for c in at.code)
        area(at, "Steps for a hard case").set_value("Say why both are wrong.").run()
        assert any(c.value == f"Review {label}: Say why both are wrong." for c in at.code)
        assert any("edited prompt template" in c.value for c in at.caption)
        at.button(key="explain_go").click().run()  # a server without structured output: the fallback
        no_exception(at)
        assert [("response_format" in r["body"]) for r in stub.requests] == [True, False]
        assert stub.requests[1]["body"]["messages"][0]["content"].startswith(f"Review {label}: Say why both are wrong.")
        assert any("-badge[" in m.value for m in at.markdown)
        assert any("did not accept structured output" in c.value for c in list(at.caption) + list(at.info))
        area(at, "Template").set_value("Review ${patient_name}").run()
        no_exception(at)
        assert any("${patient_name}" in e.value and "not a placeholder" in e.value for e in at.error)
        assert not [b for b in at.button if b.key == "explain_go"]
        at.button(key="explain_reset").click().run()
        no_exception(at)
        assert not at.error and any("Both models are wrong" in c.value and "Judge every box" in c.value for c in at.code)
        assert area(at, "Steps for a hard case").value.startswith("Both models are wrong")


def area(at: AppTest, label: str):
    return next(t for t in at.text_area if t.label == label)
