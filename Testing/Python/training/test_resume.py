"""Resume really resumes: a run interrupted at step k and resumed ends with the same weights as
the uninterrupted run (deterministic mode, num_workers 0), and its logs have no repeated steps."""

import json

import pytest
import torch

from Training.cli import main
from Training.train import train
from Training.config import load_config
from Training.state import load_state


@pytest.fixture
def deterministic_mode():
    yield
    torch.use_deterministic_algorithms(False)


@pytest.mark.slow
def test_interrupted_then_resumed_run_equals_uninterrupted_run(training_data, cache_root, tmp_path, tiny_overrides,
                                                               deterministic_mode):
    manifest = training_data
    def config(name, *extra):
        return load_config(None, tiny_overrides(
            manifest, cache_root, tmp_path, "cyclegan", name=name, deterministic="true",
            model__generator="resnet_6blocks", model__generator_options="{ngf: 4}", loss__pool_size=3,
            data__augment="true", train__checkpoint_every=1, optim__lr_policy="linear") + list(extra))

    train(config("straight"), log=lambda *a: None)

    with pytest.raises(KeyboardInterrupt):
        train(config("interrupted"), stop_at_step=7, log=lambda *a: None)  # dies during step 7
    interrupted = tmp_path / "interrupted"
    assert load_state(interrupted / "train_state.pt")["global_step"] == 6   # last good state
    assert main(["--resume", str(interrupted)]) == 0

    a, b = load_state(tmp_path / "straight" / "train_state.pt"), load_state(interrupted / "train_state.pt")
    assert a["global_step"] == b["global_step"] == 8
    for name in a["networks"]:
        for key, value in a["networks"][name].items():
            assert torch.equal(value, b["networks"][name][key]), f"{name}.{key} differs after resume"
    for name in a["optimizers"]:
        assert torch.equal(a["optimizers"][name]["state"][0]["exp_avg"], b["optimizers"][name]["state"][0]["exp_avg"])
    assert torch.equal(a["pools"]["a"]["images"], b["pools"]["a"]["images"])
    assert a["schedule"] == b["schedule"]

    steps = [json.loads(line)["step"] for line in (interrupted / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "train"]
    assert steps == list(range(1, 9))


def test_resume_of_a_folder_without_state_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("family: baseline\n")
    assert main(["--resume", str(tmp_path), "data.root=/nonexistent"]) == 2
    assert "error:" in capsys.readouterr().err
