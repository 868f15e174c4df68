"""Easy / average / hard cases: one bucketing for the Evaluation page's case browser and one image's case type
(classify_case, which the Explain page, its written summary and the LLM facts use)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

import pytest

from cxrcore.errors import ConfigError
from cxrcore.explain.cases import Cases, bucket, bucket_help, bucket_names, classify_case


def test_buckets_with_known_answers():
    # label A: truths 1, 0, 1, 0, NaN; model a at 0.5, model b at 0.3
    t = np.array([[1], [0], [1], [0], [np.nan]], float)
    a = np.array([[0.9], [0.2], [0.1], [0.6], [0.5]])   # right, right, wrong, wrong
    b = np.array([[0.8], [0.4], [0.2], [0.9], [0.5]])   # right, wrong, wrong, wrong
    c = Cases(list("vwxyz"), [""] * 5, ["A"], t, [a, b], [np.array([0.5]), np.array([0.3])])
    known, of = c.buckets("A")
    assert known.tolist() == [0, 1, 2, 3] and of.tolist() == ["easy", "average", "hard", "hard"]
    # within a bucket the most wrong first: row 2 (mean distance from the truth 0.85) before row 3 (0.75)
    assert c.in_bucket("A", "hard").tolist() == [2, 3]
    assert c.truth(0) == ["A"] and c.truth(1) == [] and c.browsable_labels() == ["A"]
    assert bucket_names(1) == ["easy", "hard"] and bucket_names(2) == ["easy", "average", "hard"]
    assert bucket_help(2)["average"] == "one model right" and bucket_help(1)["hard"] == "model wrong"


def test_one_images_case_type_is_the_same_bucketing():
    def pred(p, thr):
        return SimpleNamespace(labels=["Edema"], positive=np.array([p >= thr]))

    both_right = {"a": pred(0.9, 0.5), "b": pred(0.7, 0.5)}
    one_right = {"a": pred(0.9, 0.5), "b": pred(0.2, 0.5)}
    assert classify_case(both_right, "Edema", True).name == "easy" == bucket(2, 2)
    assert classify_case(one_right, "Edema", True).name == "average" == bucket(1, 2)
    assert classify_case(both_right, "Edema", False).name == "hard" == bucket(0, 2)
    assert classify_case(one_right, "Edema", True).right == {"a": True, "b": False}
    assert classify_case(both_right, "Edema", None).basis == "agreement"
    with pytest.raises(ConfigError, match="No model has an output for 'Hernia'"):
        classify_case(both_right, "Hernia", True)
