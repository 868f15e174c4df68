"""The Evaluation and Thresholds pages' logic, without Streamlit (issue 20 §3): the evaluation with its cases
(:mod:`cxrcore.eval.session`) and the thresholds and gate (:mod:`cxrcore.eval.tuning`)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from conftest import NIH_SAMPLE
from cxrcore.checkpoint import read_card
from cxrcore.eval.session import call_is_right, compared_thresholds, evaluate_with_cases, splits_differ
from cxrcore.eval.tuning import (DEFAULT, EDITED, LIBRARY_DEFAULT, SAVED, Gate, gate_of, recombine,
                                 saved_threshold, slider_grid, threshold_origin, thresholds_to_save)


def test_evaluation_with_a_model_on_another_split_gives_the_shared_cases(shipped, tmp_path, monkeypatch):
    """The compared model trained with another split seed (as ``cxr train --seed`` writes in its card) was scored
    on other test images of the NIH sample: the cases are the images both saw, each model at its own thresholds
    (the compared one's by its own label names)."""
    from cxrcore.checkpoint import write_card
    from cxrcore.eval.predictions import predict_split
    from cxrcore.predictor import Predictor

    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    other = tmp_path / "finetuned-seed1"
    shutil.copytree(shipped["finetuned"], other)
    card = read_card(other)
    card.data["split_seed"] = 1
    write_card(other, card)
    loaded = []

    def load(path):
        loaded.append(str(path))
        return Predictor(path)

    result, ev, cases = evaluate_with_cases(shipped["baseline"], NIH_SAMPLE, "test", 10, other, policy="", load=load)
    assert result["comparison"] and splits_differ(ev)
    own_a = set(predict_split(Predictor(shipped["baseline"]), NIH_SAMPLE, "test").image_ids)
    own_b = set(predict_split(Predictor(other), NIH_SAMPLE, "test").image_ids)
    assert own_a != own_b and loaded == [str(other)]   # the compared model's split predicted again, once
    assert set(cases.image_ids) == own_a & own_b and len(cases.image_ids) == len(ev.compare["targets"])
    assert cases.image_ids == [x for x in ev.image_ids if x in own_b]   # in the evaluation's order
    assert cases.n_models == 2 and cases.labels == list(ev.compare["labels"])
    thr_b = compared_thresholds(card)
    assert thr_b == {x: card.thresholds.get(x, 0.5) for x in card.labels}
    per = result["comparison"]["per_label"]
    assert list(cases.thresholds[1]) == pytest.approx([thr_b[per[x]["label_compare"]] for x in cases.labels])
    assert list(cases.thresholds[0]) == pytest.approx([ev.thresholds[ev.labels.index(x)] for x in cases.labels])

    # the same split (the shipped fine-tuned model: seed 0 like the baseline): nothing predicted again
    _, same, _ = evaluate_with_cases(shipped["baseline"], NIH_SAMPLE, "test", 10, shipped["finetuned"], load=load)
    assert same.compare is not None and not splits_differ(same) and loaded == [str(other)]
    alone, ev1, cases1 = evaluate_with_cases(shipped["baseline"], NIH_SAMPLE, "test", 10)
    assert ev1.compare is None and not splits_differ(ev1) and not alone.get("comparison")
    assert cases1.n_models == 1 and cases1.image_ids == list(ev1.image_ids) and cases1.labels == list(ev1.labels)


def test_a_call_is_right_when_it_agrees_with_the_truth():
    assert call_is_right(0.7, 0.5, True) and call_is_right(0.5, 0.5, True)   # at the threshold: positive
    assert call_is_right(0.2, 0.5, False) and not call_is_right(0.2, 0.5, True)
    assert not call_is_right(0.9, 0.5, False) and call_is_right(np.float32(0.6), np.float64(0.5), np.True_)


# --------------------------------------------------------------------------- Thresholds page


def test_slider_grid_origins_and_what_save_writes():
    lib = {"Edema": 0.01234, "Mass": 0.3}
    assert slider_grid({}) == (0.01, 2) and slider_grid(lib) == (0.0001, 4)
    card = {"Edema": 0.4, "Nodule": 0.333}
    assert saved_threshold(card, "Nodule", 2) == 0.33 and saved_threshold(card, "Mass", 2) == 0.5
    assert threshold_origin("Edema", 0.0123, card, lib, 4) == LIBRARY_DEFAULT
    assert threshold_origin("Edema", 0.4, card, lib, 4) == SAVED
    assert threshold_origin("Nodule", 0.33, card, {}, 2) == SAVED
    assert threshold_origin("Mass", 0.5, card, {}, 2) == DEFAULT
    assert threshold_origin("Mass", 0.5, card, lib, 4) == DEFAULT and threshold_origin("Mass", 0.3, card, lib, 4) == \
        LIBRARY_DEFAULT
    assert threshold_origin("Edema", 0.5, card, {}, 2) == EDITED and threshold_origin("Mass", 0.6, {}, {}, 2) == EDITED
    # a library default left as it is keeps its exact value; anything else is written as the slider shows it
    assert thresholds_to_save({"Edema": 0.0123, "Mass": 0.31, "Nodule": 0.33}, card, lib, 4) == \
        {"Edema": 0.01234, "Mass": 0.31, "Nodule": 0.33}


def test_the_gate_of_a_two_network_run_recombines_its_findings(two_network_home, shipped, monkeypatch):
    """The combined checkpoint of a two-network run: one gate threshold (its gate label's); the findings the page
    shows are the raw outputs recombined at the slider's value, as the predictor reports them at the card's."""
    from cxrcore.eval.predictions import predict_split
    from cxrcore.predictor import Predictor

    monkeypatch.setenv("CXR_HOME", str(two_network_home))
    ckpt = two_network_home / "runs" / "twonet" / "checkpoint"
    card = read_card(ckpt)
    gate_label = card.labels[-1]
    gate = gate_of(card.model, card.thresholds, card.labels)
    assert gate == Gate(gate_label, card.thresholds[gate_label], "hard")
    assert gate_of(card.model, card.thresholds, card.labels, {gate_label: 0.9, card.labels[0]: 0.1}).threshold == 0.9
    assert gate_of(card.model, card.thresholds, card.labels[:-1]) is None            # no gate column predicted
    plain = read_card(shipped["finetuned"])
    assert gate_of(plain.model, plain.thresholds, plain.labels) is None

    predictor = Predictor(ckpt)
    raw = predict_split(predictor, NIH_SAMPLE, "test", raw=True)   # what the page tunes on, and what is reported
    reported = predict_split(predictor, NIH_SAMPLE, "test")
    assert len(raw.image_ids) > 10
    assert raw.image_ids == reported.image_ids
    np.testing.assert_allclose(recombine(raw.probs, card.model, gate), reported.probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(recombine(raw.probs, card.model, gate.threshold), reported.probs, rtol=1e-5, atol=1e-6)
    # the gate closed: every finding but the exempt No Finding reported as 0 (hard mode); open: the raw outputs
    closed = recombine(raw.probs, card.model, 1.01)
    exempt = card.model["two_stage"]["exempt"]
    findings = [j for j in range(len(card.labels) - 1) if j not in exempt]
    assert (closed[:, findings] == 0).all() and np.array_equal(closed[:, exempt], raw.probs[:, exempt])
    np.testing.assert_array_equal(recombine(raw.probs, card.model, 0.0), raw.probs)
    assert recombine(raw.probs, plain.model, None) is raw.probs
