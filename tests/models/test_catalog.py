"""The models a picker offers, without Streamlit (issue 20 §3 and §4): :mod:`cxrcore.catalog` over the workspace
walk of :mod:`cxrcore.workspace`, a two-network run's networks listed under it, named for what they are."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from cxrcore import hosting, workspace
from cxrcore.catalog import MY_THRESHOLDS, SHARED_THRESHOLDS, checkpoint_choices
from cxrcore.checkpoint import read_card
from cxrcore.eval.thresholds import OWN_COPY_TAG, SHARED_COPY_TAG, save_target, save_thresholds

GATE = "run twonet · gate (normal vs abnormal)"
DISEASE = "run twonet · disease model"

@pytest.fixture
def runs_ws(two_network_home, shipped, tmp_path, monkeypatch) -> Path:
    """The two-network run beside other runs, with known ages: ``newer`` (a plain run, newest), ``twonet``, then the
    nested ``group/trial`` and ``solo/gate`` (a plain run in a folder that happens to be called gate)."""
    home = tmp_path / "home"
    shutil.copytree(two_network_home / "runs" / "twonet", home / "runs" / "twonet", symlinks=True)
    for where, source in {"newer": shipped["finetuned"], "group/trial": shipped["baseline"],
                          "solo/gate": shipped["baseline"]}.items():
        shutil.copytree(source, home / "runs" / where / "checkpoint")
    monkeypatch.setenv("CXR_HOME", str(home))
    monkeypatch.setenv("CXR_CHECKPOINTS", str(tmp_path / "no-shipped"))  # the runs only
    ages = {"newer": 10, "twonet": 20, "twonet/gate": 40, "twonet/disease": 30, "group/trial": 50, "solo/gate": 60}
    now = time.time()
    for where, age in ages.items():
        os.utime(home / "runs" / where / "checkpoint" / "card.json", (now - age, now - age))
    return home / "runs"


def test_a_two_network_runs_networks_are_listed_under_it_named_for_what_they_are(runs_ws):
    assert workspace.sub_network(runs_ws / "twonet" / "gate" / "checkpoint") == "gate"
    assert workspace.sub_network(runs_ws / "twonet" / "disease" / "checkpoint") == "disease"
    assert workspace.sub_network(runs_ws / "solo" / "gate" / "checkpoint") is None   # not a two-network run
    assert workspace.sub_network(runs_ws / "twonet" / "checkpoint") is None
    assert [parts for parts, _ in workspace.finished_runs()] == [
        ("newer",), ("twonet",), ("twonet", "gate"), ("twonet", "disease"), ("group", "trial"), ("solo", "gate")]

    choices = checkpoint_choices(library=False)
    assert list(choices) == ["run newer", "run twonet", GATE, DISEASE, "run group/trial", "run solo/gate"]
    assert choices[GATE] == str(runs_ws / "twonet" / "gate" / "checkpoint")
    assert choices[DISEASE] == str(runs_ws / "twonet" / "disease" / "checkpoint")
    assert choices["run twonet"] == str(runs_ws / "twonet" / "checkpoint")
    assert "run twonet/gate" not in choices and "run twonet/disease" not in choices
    # what each entry is: the gate answers "Any finding" alone, the disease model has the findings, the run both
    gate, disease, both = (read_card(choices[x]) for x in (GATE, DISEASE, "run twonet"))
    assert len(gate.labels) == 1 and both.labels == disease.labels + gate.labels
    assert workspace.run_label(("twonet", "gate")) == GATE and workspace.run_label(("newer",)) == "run newer"


def test_the_ui_pickers_offer_the_same_names(runs_ws):
    """Every picker (Evaluation, Thresholds, Compare, Explain, Training's start point, Home) lists
    ui.common.checkpoint_choices: outside a browser session, the operator's view of the catalog."""
    from ui.common import checkpoint_choices as ui_choices

    assert ui_choices(library=False) == checkpoint_choices(library=False)
    assert list(ui_choices(library=False))[1:4] == ["run twonet", GATE, DISEASE]


def test_a_visitors_thresholds_for_a_network_are_listed_under_the_same_name(runs_ws):
    s = hosting.settings(address="0.0.0.0", environ={})   # a shared server: a visitor saves into their own copy
    bob = hosting.User("bob@example.org", name="Bob", signed_in=True)
    gate = runs_ws / "twonet" / "gate" / "checkpoint"
    label = read_card(gate).labels[0]
    copy = save_thresholds(gate, {label: 0.3}, user=bob, settings=s)
    assert save_target(gate, bob, s).folder == copy
    mine = checkpoint_choices(bob, s, library=False)
    assert mine[f"{GATE}{MY_THRESHOLDS}"] == str(copy)
    assert list(mine).index(f"{GATE}{MY_THRESHOLDS}") == list(mine).index(GATE) - 1   # beside the network
    assert f"{GATE}{MY_THRESHOLDS}" not in checkpoint_choices(library=False)           # bob's alone
    alice = hosting.User("alice@example.org", signed_in=True)
    assert f"{GATE}{MY_THRESHOLDS}" not in checkpoint_choices(alice, s, library=False)
    assert (MY_THRESHOLDS, SHARED_THRESHOLDS) == (OWN_COPY_TAG, SHARED_COPY_TAG)   # the names save_target uses


# --------------------------------------------------------------------------- Evaluation page
