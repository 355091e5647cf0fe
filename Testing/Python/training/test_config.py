"""The configuration: defaults with help texts, YAML/JSON files, overrides, unknown keys."""

import json
from pathlib import Path

import pytest

from Training import config as cfg
from Training.cli import main

CONFIGS = Path(__file__).resolve().parents[3] / "configs"


def test_every_field_has_a_default_and_a_help_text():
    rows = cfg.describe_fields()
    assert len(rows) > 40
    assert all(help_text for _, _, help_text in rows)


def test_overrides_are_parsed_as_yaml_values():
    config = cfg.load_config(None, ["data.slice_size=64", "data.augment=false", "data.split=[0.5, 0.5, 0]",
                                    "model.generator_options.ngf=8", "optim.lr=1e-4", "data.pixel_spacing_mm=null"])
    assert config.data.slice_size == 64 and config.data.augment is False
    assert config.data.split == [0.5, 0.5, 0] and config.model.generator_options == {"ngf": 8}
    assert config.optim.lr == pytest.approx(1e-4) and config.data.pixel_spacing_mm is None


def test_unknown_key_is_an_error_that_names_it():
    with pytest.raises(cfg.ConfigError, match="data.slicesize"):
        cfg.load_config(None, ["data.slicesize=64"])


def test_wrong_type_and_bad_choice_are_errors():
    with pytest.raises(cfg.ConfigError, match="data.batch_size"):
        cfg.load_config(None, ["data.batch_size=four"])
    with pytest.raises(cfg.ConfigError, match="gan_mode"):
        cfg.load_config(None, ["loss.gan_mode=wgan"])


def test_json_file_and_yaml_round_trip(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"family": "vae", "data": {"slice_size": 64}}))
    config = cfg.load_config(path)
    assert config.family == "vae" and config.data.slice_size == 64
    again = tmp_path / "c.yaml"
    again.write_text(cfg.to_yaml(config))
    assert cfg.load_config(again) == config


def test_unknown_key_in_a_file_is_an_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("family: pix2pix\ntrain:\n  epoch: 3\n")
    with pytest.raises(cfg.ConfigError, match="train.epoch"):
        cfg.load_config(path)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_load(path):
    config = cfg.load_config(path)
    assert config.family in cfg.FAMILIES


def test_every_family_has_an_example_config():
    families = {cfg.load_config(p).family for p in CONFIGS.glob("*.yaml")}
    assert families == set(cfg.FAMILIES)


def test_print_config_shows_the_effective_values(capsys):
    assert main(["--print-config", "family=unit", "loss.unit_preset=munit-master"]) == 0
    out = capsys.readouterr().out
    assert "family: unit" in out and "unit_preset: munit-master" in out


def test_cli_reports_unknown_key_and_exits_non_zero(capsys):
    assert main(["--print-config", "bogus=1"]) == 2
    assert "unknown key(s) bogus" in capsys.readouterr().err
