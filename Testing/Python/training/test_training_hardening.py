"""Training set-up and runs under hostile settings (issue 9, item 6, and a newcomer's friction):
bad values are refused before anything is created, a diverging run stops before it saves."""

import argparse
import os

import numpy as np
import pytest
import torch

from Training.cli import main, train
from Training.config import ConfigError, load_config


def _refused(capsys, tmp_path, *overrides):
    code = main([f"output_dir={tmp_path / 'runs'}", "device=cpu", f"data.root={tmp_path}", "name=r", *overrides])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert not (tmp_path / "runs").exists()  # not even the parent folder
    return err


@pytest.mark.parametrize("override,pattern", [
    ("optim.beta1=5", "optim.beta1 must be a finite number in [0, 1)"),
    ("optim.lr=.inf", "optim.lr must be a finite number"),
    ("optim.lr=.nan", "optim.lr must be a finite number"),
    ("loss.l1=-1", "loss.l1"),
    ("data.high_percentile=120", "data.high_percentile"),
    ("data.slice_size=60000", "data.slice_size must be <= 1024"),
    ("model.generator_options={ngf: 10000000}", "out of range"),
    ("model.generator_options={ngf: 4000}", "a network of more than 300,000,000 values"),
    ("model.discriminator_options={ndf: 4000}", "model.discriminator_options"),
])
def test_bad_values_are_refused_before_anything_is_created(capsys, tmp_path, override, pattern):
    assert pattern in _refused(capsys, tmp_path, "family=pix2pix", override)


def test_train_without_arguments_prints_usage_and_creates_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([]) == 2
    assert "--config" in capsys.readouterr().out
    assert os.listdir(tmp_path) == []


def test_missing_data_says_what_data_and_how_to_pass_it(capsys, tmp_path):
    err = _refused(capsys, tmp_path, f"data.root={tmp_path / 'paired'}")
    assert "--data DIR" in err and "IXI" in err and "docs/training.md" in err


def test_data_option_sets_the_data_folder(capsys, tmp_path):
    assert main(["--data", str(tmp_path), "--print-config"]) == 0
    assert f"root: {tmp_path}" in capsys.readouterr().out


def test_unreadable_training_state_does_not_suggest_unpickling(tmp_path):
    from Training.state import STATE_VERSION, load_state

    torch.save({"version": STATE_VERSION, "x": argparse.Namespace(a=1)}, tmp_path / "train_state.pt")
    with pytest.raises(Exception) as error:
        load_state(tmp_path / "train_state.pt")
    message = str(error.value)
    assert "weights_only=False" not in message and "not unpickled" in message and "\n" not in message


@pytest.mark.realdata
def test_diverging_run_stops_and_keeps_the_last_good_state(manifest, cache_root, tmp_path, tiny_overrides,
                                                            monkeypatch):
    from MRISynthesisLib.errors import MRISynthesisError
    from Training.run_folder import RunFolder
    from Training.state import load_state
    from Training.trainers.supervised import SupervisedTrainer

    original = SupervisedTrainer.train_step

    def poisoned(self, batch):
        losses = original(self, batch)
        if self.global_step == 2:  # the 3rd step's update blows the weights up
            with torch.no_grad():
                next(self.networks["g"].parameters()).fill_(float("nan"))
        return losses

    monkeypatch.setattr(SupervisedTrainer, "train_step", poisoned)
    config = load_config(None, tiny_overrides(manifest, cache_root, tmp_path, "supervised", name="nan",
                                              train__checkpoint_every=1, model__generator="resnet_6blocks",
                                              model__generator_options="{ngf: 4}"))
    with pytest.raises(MRISynthesisError, match="training stopped at step 3: the weights became NaN"):
        train(config, log=lambda *a: None)
    state = load_state(RunFolder(tmp_path / "nan").state)
    assert state["global_step"] == 2
    assert all(torch.isfinite(t).all() for t in state["networks"]["g"].values() if t.is_floating_point())


@pytest.mark.realdata
def test_validation_metrics_are_printed_as_they_happen(manifest, cache_root, tmp_path, tiny_overrides):
    config = load_config(None, tiny_overrides(manifest, cache_root, tmp_path, "baseline", name="echo",
                                              train__epochs=1, train__steps_per_epoch=2))
    lines = []
    train(config, log=lines.append)
    validations = [line for line in lines if line.startswith("validation after epoch")]
    assert len(validations) == 1 and "brain MAE" in validations[0] and "SSIM" in validations[0]
    assert any(line.startswith("inverted-intensity baseline") for line in lines)
    assert lines.index(validations[-1]) < len(lines) - 1  # before the final 'done' line
    assert np.isfinite(float(validations[0].split("MAE ")[1].split()[0]))


def test_config_error_is_not_a_traceback_type():
    with pytest.raises(ConfigError):
        load_config(None, ["optim.beta2=1.5"])
