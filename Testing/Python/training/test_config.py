"""The configuration: defaults with help texts, YAML/JSON files, overrides, unknown keys."""

import json
import sys
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


# -- families: registered once (Training/families.py), everything else derived ----------------------

def test_family_lists_derive_from_the_registry():
    from Training.families import FAMILIES as REGISTRY
    from Training.trainers import TRAINERS

    assert cfg.FAMILIES == tuple(REGISTRY) == tuple(TRAINERS)
    assert cfg.DEFAULT_GENERATORS == {name: f.default_generator for name, f in REGISTRY.items()}
    for name, family in REGISTRY.items():
        assert TRAINERS[name].family == name
        config = cfg.load_config(None, [f"family={name}"])
        assert config.generator_name == family.default_generator
        assert config.gan_mode == (family.gan_mode or "")
    assert {name for name, f in REGISTRY.items() if not f.needs_aligned_data} == {"cyclegan", "unit"}


def test_every_loss_option_says_which_families_read_it():
    import dataclasses

    from Training.families import families_reading

    for field in dataclasses.fields(cfg.LossConfig):
        readers = families_reading(field.name)
        assert readers, f"loss.{field.name} is read by no family"
        assert field.metadata["help"].split(":")[0].split("/") == readers, field.name


@pytest.mark.parametrize("family, option, readers", [
    ("pix2pix", "loss.cycle=5", "cyclegan"), ("supervised", "loss.l1=10", "pix2pix"),
    ("supervised", "loss.gan_mode=lsgan", "pix2pix/cyclegan/unit"),
    ("vae", "loss.ssim=1", "pix2pix/supervised/baseline"),
    ("cyclegan", "loss.beta=0.1", "vae"), ("unit", "loss.supervised=true", "cyclegan"),
])
def test_an_option_the_family_ignores_is_refused(family, option, readers):
    with pytest.raises(cfg.ConfigError) as error:
        cfg.load_config(None, [f"family={family}", option])
    name = option.split("=")[0]
    assert str(error.value).startswith(f"{name} is an option of {readers}; family {family} ignores it")


def test_an_ignored_option_at_its_default_and_the_familys_own_options_are_accepted():
    config = cfg.load_config(None, ["family=pix2pix", "loss.cycle=10.0", "loss.l1=50", "loss.ssim=1",
                                    "loss.gan_mode=lsgan"])
    assert (config.loss.l1, config.gan_mode) == (50.0, "lsgan")


def test_a_new_family_is_registered_in_one_place(monkeypatch):
    from Training import families
    from Training.trainers.supervised import SupervisedTrainer

    class MirrorTrainer(SupervisedTrainer):
        family = "mirror"

    monkeypatch.setattr(sys.modules[__name__], "MirrorTrainer", MirrorTrainer, raising=False)
    mirror = families.Family("mirror", f"{__name__}:MirrorTrainer", "resunet", None, True, ("ssim",))
    monkeypatch.setitem(families.FAMILIES, "mirror", mirror)
    config = cfg.load_config(None, ["family=mirror", "loss.ssim=1"])
    assert (config.generator_name, config.gan_mode) == ("resunet", "")
    assert mirror.trainer_class() is MirrorTrainer
    with pytest.raises(cfg.ConfigError, match="data.mode 'unpaired' needs family cyclegan or unit; mirror"):
        cfg.load_config(None, ["family=mirror", "data.mode=unpaired"])
    with pytest.raises(cfg.ConfigError, match="loss.foreground_l1 is an option of"):
        cfg.load_config(None, ["family=mirror", "loss.foreground_l1=true"])
