"""Streamlit AppTest runs of the Home and Compare pages on the shipped models."""
from __future__ import annotations

import pytest

from conftest import app_page as page, no_exception


def test_home_lists_models_and_data(app_env, shipped):
    at = page("home").run()
    no_exception(at)
    table = at.dataframe[0].value
    assert {"baseline (shipped demo)", "finetuned (shipped demo)"} <= set(table["model"])
    assert table.set_index("model").loc["finetuned (shipped demo)", "labels"] == 14
    assert any("phantom" in str(j.value) for j in at.json)
    # the library models come last, by name (nothing imported); their cards (the library's metadata: slow on a
    # fresh server) when the expander is opened
    assert [h.value for h in at.subheader] == ["Models", "Data", "Library models (pretrained, used as they are)"]
    assert len(at.dataframe) == 1 and "`xrv:densenet121-res224-all`" in at.markdown[-1].value
    assert "`clip:ViT-B-32/openai`" in at.markdown[-1].value
    at.session_state["home_library"] = True  # what opening the expander does (on_change="rerun")
    at.run()
    no_exception(at)
    library = at.dataframe[1].value
    assert any(m.startswith("xrv:densenet121-res224-all") for m in library["model"])
    assert library.set_index("model").loc["xrv:densenet121-res224-all (library)", "labels"] == 18


def test_compare_on_a_held_out_phantom_image(app_env, shipped):
    at = page("compare").run()
    no_exception(at)
    assert any("Upload an image" in i.value for i in at.info)
    at.radio(key="compare_source").set_value("A held-out phantom test image (ground truth known)").run()
    no_exception(at)
    table = at.dataframe[0].value
    assert {"baseline p", "fine-tuned p", "baseline ± sd", "fine-tuned ± sd"} <= set(table.columns)
    assert (table["fine-tuned ± sd"].dropna() > 0).any()  # Monte-Carlo dropout spread, on by default
    assert not at.warning  # a phantom chest passes the out-of-distribution check
    # labels of both lists, synonyms folded: Effusion and Pleural Effusion are one row
    labels = list(table["label"])
    assert "Support Devices" in labels and "Hernia" in labels
    assert not ({"Effusion", "Pleural Effusion"} <= set(labels))
    assert table["fine-tuned p"].notna().sum() == 14 and table["baseline p"].notna().sum() == 14
    # switching the heatmap label re-renders overlays from the cached predictions
    at.selectbox(key="compare_label").set_value("Cardiomegaly").run()
    no_exception(at)
    captions = " ".join(c.value for c in at.caption)
    assert "Ground truth" in captions and "feature cells" in captions
    # another pytorch-grad-cam method for the chosen label, computed on demand
    at.selectbox(key="compare_method").set_value("GradCAMPlusPlus").run()
    no_exception(at)
    assert "GradCAMPlusPlus" in " ".join(c.value for c in at.caption)
    assert len(at.get("image")) == 3  # input + two overlays


def test_compare_shows_each_models_thresholds_and_held_out_auroc_before_an_upload(app_env, shipped):
    """Before an image: per label, each model's threshold and the AUROC its card records on its own held-out
    split, and what that split was (synthetic phantoms here, said so)."""
    from cxrcore.checkpoint import read_card
    from ui.common import checkpoint_choices

    at = page("compare").run()
    no_exception(at)
    table = next(d.value for d in at.dataframe if "baseline held-out AUROC" in d.value.columns).set_index("label")
    chosen = {"baseline": at.selectbox(key="compare_base").value, "fine-tuned": at.selectbox(key="compare_tuned").value}
    for who, name in chosen.items():
        card = read_card(checkpoint_choices()[name])
        for label in card.labels:
            assert table.loc[label, f"{who} threshold"] == pytest.approx(card.thresholds[label], abs=5e-4)
            assert table.loc[label, f"{who} held-out AUROC"] == pytest.approx(card.metrics["test"]["auroc"][label],
                                                                             abs=5e-4)
    # a label only one model has is blank for the other
    assert table.loc["Hernia", "fine-tuned threshold"] != table.loc["Hernia", "fine-tuned threshold"]  # NaN
    captions = " ".join(c.value for c in at.caption)
    assert "AUROC on the test split of" in captions and "never real radiographs" in captions
    assert "compare_glance_chart" in {c.key for c in at.get("plotly_chart")}


def test_compare_scores_the_heatmaps_faithfulness_on_demand(app_env, shipped):
    at = page("compare").run()
    at.radio(key="compare_source").set_value("A held-out phantom test image (ground truth known)").run()
    at.selectbox(key="compare_label").set_value("Cardiomegaly").run()
    no_exception(at)
    # nothing is computed before the button: the first answer is not slowed
    assert not any("ROAD combined ↑" in d.value.columns for d in at.dataframe)
    assert "compare_faith_chart" not in {c.key for c in at.get("plotly_chart")}
    at.button(key="compare_faith_run").click().run()
    no_exception(at)
    table = next(d.value for d in at.dataframe if "ROAD combined ↑" in d.value.columns)
    assert list(table["model"]) == ["baseline", "fine-tuned"]
    assert table["ROAD combined ↑"].between(-1, 1).all() and table["deletion AUC ↓"].between(0, 1).all()
    assert "compare_faith_chart" in {c.key for c in at.get("plotly_chart")}  # the faithfulness curves
    assert "higher = more faithful" in " ".join(c.value for c in at.caption)
    # another method: the scores are for it, again only on demand
    at.selectbox(key="compare_method").set_value("HiResCAM").run()
    no_exception(at)
    assert not any("ROAD combined ↑" in d.value.columns for d in at.dataframe)
