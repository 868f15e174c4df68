"""Training options are declared once (cxrcore/train/config.py): the CLI flags, the Training form and
the checks derive from the declaration, so a new field appears everywhere with no other edit."""
from __future__ import annotations

import argparse
from dataclasses import fields, make_dataclass

import pytest
from streamlit.testing.v1 import AppTest

from conftest import REPO
from cxrcore.cli import build_parser, main
from cxrcore.errors import ConfigError
from cxrcore.train import config
from cxrcore.train.config import TrainConfig, add_cli_flags, config_from_args, opt, options


def extended_config():
    """TrainConfig plus one new option, declared the way every option is."""
    return make_dataclass(
        "TrainConfig",
        [("label_smoothing", float, opt(0.0, "Label smoothing", "Move the targets towards 0.5 by this much.",
                                        "loss", min=0.0, max=0.5, step=0.05))],
        bases=(TrainConfig,))


def test_every_field_is_declared_and_every_declaration_has_a_flag():
    declared = {o.name for o in options()}
    from cxrcore.train.config import INTERNAL_FIELDS

    assert declared == {f.name for f in fields(TrainConfig)} - set(INTERNAL_FIELDS)
    parser = argparse.ArgumentParser()
    add_cli_flags(parser)
    flags = {a.dest for a in parser._actions}
    assert declared <= flags
    # the loss / sampler modules use the declared choices (one source of truth)
    from cxrcore.train.losses import LOSSES
    from cxrcore.train.sampling import SAMPLERS

    assert LOSSES == config.option("loss").choices and SAMPLERS == config.option("sampler").choices


def test_cli_flags_round_trip_to_the_config():
    parser = argparse.ArgumentParser()
    add_cli_flags(parser)
    a = parser.parse_args(["--data", "/d", "--lr", "0.01", "--no-augment", "--views", "pa,ap", "--sex", "F",
                           "--augment-options", '{"p": 0.5}', "--max-images", "50", "--mode", "lora"])
    cfg = TrainConfig.from_dict(config_from_args(a))
    assert (cfg.lr, cfg.augment, cfg.views, cfg.sex, cfg.augment_options, cfg.max_images, cfg.mode) == \
           (0.01, False, ["PA", "AP"], "F", {"p": 0.5}, 50, "lora")
    assert cfg.epochs == TrainConfig.__dataclass_fields__["epochs"].default  # flags not given keep the default
    with pytest.raises(SystemExit):
        parser.parse_args(["--data", "/d", "--mode", "partial"])  # choices come from the declaration


@pytest.mark.parametrize("bad, message", [
    ({"lr": 0.0}, "lr must be positive"), ({"lr": -1e-3}, "lr must be at least 0"), ({"epochs": 0}, "epochs must be at least 1"),
    ({"gate_threshold": 1.5}, "gate_threshold must be at most 1"), ({"max_images": 5}, "max_images must be at least 10"),
    ({"mode": "partial"}, "mode must be one of full, head, lora"), ({"batch_size": 2.5}, "whole number"),
    ({"pos_weight": "yes"}, "true or false"), ({"val_fraction": 0.5, "test_fraction": 0.45}, "too little"),
])
def test_checks_come_from_the_declaration(bad, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(data="/d", **bad).validate()


def test_a_new_field_appears_in_cxr_train_help_and_its_bounds_are_checked(monkeypatch, capsys):
    monkeypatch.setattr(config, "TrainConfig", extended_config())
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    help_text = capsys.readouterr().out
    assert "--label-smoothing" in help_text and "Move the targets towards 0.5" in help_text
    assert main(["train", "--data", str(REPO / "tests" / "data" / "nih-sample"), "--label-smoothing", "0.7"]) == 2
    assert "label_smoothing must be at most 0.5" in capsys.readouterr().err


def test_a_new_field_appears_on_the_training_form(monkeypatch, app_env):
    monkeypatch.setattr(config, "TrainConfig", extended_config())
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=300)
    at.switch_page("views/training.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    widget = at.number_input(key="tf_label_smoothing")
    assert widget.label == "Label smoothing" and widget.value == 0.0 and widget.max == 0.5
    assert widget.help == "Move the targets towards 0.5 by this much."
