"""The shipped build report (checkpoints/BUILD.json, written by `cxr demo build`) against the shipped
checkpoints and against the targets of the demo models (cxrcore.demo.TARGETS). Reads files only."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cxrcore import demo
from cxrcore.checkpoint import read_card

from conftest import CHECKPOINTS

# Targets checkpoints/README.md says the shipped build reaches (keys of cxrcore.demo.target_checks).
CLAIMED = ["finetuned_chexpert_mean_auroc", "finetuned_beats_baseline_every_shared_label", "baseline_nih_mean_auroc",
           "finetuned_chexpert_pointing_all_boxes", "finetuned_chexpert_pointing_label_mean",
           "finetuned_chexpert_pointing_above_chance_every_label_with_20_boxes", "baseline_nih_pointing_all_boxes",
           "baseline_nih_pointing_label_mean", "baseline_nih_pointing_above_chance_every_label_with_20_boxes",
           "build_minutes"]


@pytest.fixture(scope="module")
def build() -> dict:
    return json.loads((CHECKPOINTS / "BUILD.json").read_text())


def test_report_is_about_the_shipped_checkpoints(build, shipped):
    cfg = build["config"]
    cards = {name: read_card(path) for name, path in shipped.items()}
    for card in cards.values():
        assert card.preprocess["size"] == cfg["image_size"]
        assert card.model["kwargs"]["output_stride"] == cfg["output_stride"]
    assert cards["baseline"].data["name"] == build["data"]["nih"]
    assert cards["finetuned"].data["name"] == build["data"]["chexpert"]
    # every epoch ran; the checkpoint is the best one (its history ends there)
    assert cards["finetuned"].training["epochs_run"] == cfg["finetune_epochs"]
    assert cards["baseline"].training["epochs_run"] == cfg["baseline_epochs"]
    for card in cards.values():
        assert card.training["history"][-1]["epoch"] == card.training["best_epoch"] <= card.training["epochs_run"]
    # the report's test-split AUROC per label is the fine-tuned card's own test metric: same weights, same images
    own = build["models"]["finetuned"]["own_auroc"]
    test = cards["finetuned"].metrics["test"]
    assert build["models"]["finetuned"]["n"] == test["n"]
    for label, value in test["auroc"].items():
        assert (own[label] is None) == (value is None)
        if value is not None:
            assert own[label] == pytest.approx(value, abs=1e-3), label


def test_evaluation_sets_are_fresh_and_large_enough(build):
    fresh = build["fresh"]["data"]
    assert set(fresh) == {"chexpert", "nih"}
    for domain, spec in fresh.items():
        assert spec["seed"] != build["config"]["demo_data"][domain]["seed"]      # no image shared with training
        assert spec["name"] == f"phantom-{domain}-seed{spec['seed']}-n{spec['n']}" and spec["n"] >= 1000
    models = build["fresh"]["models"]
    assert models["finetuned"]["chexpert"]["auroc"]["n_images"] == fresh["chexpert"]["n"]
    assert models["baseline"]["nih"]["auroc"]["n_images"] == fresh["nih"]["n"]


def test_report_tables_add_up(build):
    for model, by_domain in build["fresh"]["models"].items():
        for domain, m in by_domain.items():
            values = [v for v in m["auroc"]["auroc"].values() if v is not None]
            assert values and m["auroc"]["mean_auroc"] == pytest.approx(np.mean(values)), (model, domain)
            pg = m["pointing"]
            labels = pg["labels"]
            n = sum(s["n"] for s in labels.values())
            assert n == pg["overall"]["n"] > 0
            assert pg["overall"]["pointing"] == pytest.approx(sum(s["n"] * s["pointing"] for s in labels.values()) / n)
            assert pg["label_mean"]["pointing"] == pytest.approx(np.mean([s["pointing"] for s in labels.values()]))
            for s in labels.values():
                assert 0 <= s["pointing"] <= 1 and 0 < s["chance"] < 1
    pairs = build["fresh"]["shared_labels_chexpert"]
    ft = build["fresh"]["models"]["finetuned"]["chexpert"]["auroc"]["auroc"]
    assert len(pairs) == 7 and all(v["finetuned"] == ft[x] for x, v in pairs.items())
    assert all(v["finetuned_better"] == (v["finetuned"] > v["baseline"]) for v in pairs.values())


def test_claimed_targets_hold(build):
    checks = demo.target_checks(build)
    if "targets" in build:                      # written by the build itself
        assert build["targets"] == json.loads(json.dumps(checks))
    assert set(CLAIMED) <= set(checks)
    assert [name for name in CLAIMED if not checks[name]["holds"]] == []


def test_readme_carries_the_reports_own_tables(build):
    """checkpoints/README.md shows the tables generated from BUILD.json (python -m cxrcore.demo tables)."""
    readme = (CHECKPOINTS / "README.md").read_text()
    assert demo.report_tables(build) in readme


def test_fresh_set_is_scored_under_each_policy_from_one_model_pass(build):
    ft = build["fresh"]["models"]["finetuned"]["chexpert"]["auroc"]
    assert ft["policy"] == build["config"]["fresh_policies"][0] == "ignore"
    assert set(ft["by_policy"]) == {"ignore", "zeros", "ones"}
    assert ft["by_policy"]["ignore"]["auroc"] == ft["auroc"]
    # a label without uncertain rows scores the same under every policy; one with them does not
    for x, au in ft["auroc"].items():
        if au is None:
            continue
        same = {round(ft["by_policy"][p]["auroc"][x], 9) for p in ("ignore", "zeros", "ones")}
        if ft["positives"][x] + ft["negatives"][x] == ft["n_images"]:
            assert len(same) == 1, x
    assert build["config"]["finetune_policy"] == "ones"


def test_the_cards_change_thresholds_are_the_builds(shipped):
    """The change thresholds in each shipped card (cxr prior) are the ones BUILD.json records, one per label the
    tuning pairs changed, each on the tuning grid."""
    from cxrcore.prior.evaluate import TAU_GRID

    build = json.loads((shipped["baseline"].parent / "BUILD.json").read_text())
    for name, path in shipped.items():
        stored = read_card(path).metrics["change"]
        assert stored == build["change"][name]
        assert set(stored["thresholds"]) <= set(read_card(path).labels) and len(stored["thresholds"]) >= 10
        assert all(round(v, 2) in set(TAU_GRID.tolist()) for v in stored["thresholds"].values())
