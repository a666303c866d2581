"""`--model MODULE:FACTORY`: users' own models, written here as a user would, trained through the command line on
an RGB image folder, reported, diagnosed, resumed and summarised; and every bad factory refused in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from convscope.config import TrainConfig
from convscope.errors import ConfigError
from convscope.experiments.setup import build_model

# The user's own model file, copied into each test's working folder (tests/models/usermodels.py).
USER_MODELS = (Path(__file__).parent / "usermodels.py").read_text()
PER_CLASS = 160  # 10 classes x 160 = 1600 images; the folder loader holds 20% out: 1280 for training


@pytest.fixture(scope="module")
def rgb_folder(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real Fashion-MNIST images padded to 32x32 and repeated to 3 channels, one PNG each, a folder per class."""
    from PIL import Image

    from convscope.data.sources import load_dataset

    fashion = load_dataset("fashion-mnist", root=data_dir)
    root = tmp_path_factory.mktemp("rgb") / "fashion-rgb"
    images, labels = fashion.train_images.numpy(), fashion.train_labels.numpy()
    for c, name in enumerate(fashion.classes):
        folder = root / name.replace("/", "-")
        folder.mkdir(parents=True)
        for i, index in enumerate(np.flatnonzero(labels == c)[:PER_CLASS]):
            grey = np.pad(images[index], 2)
            Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2), "RGB").save(folder / f"{i:04d}.png")
    return root


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "convscope", *args], cwd=cwd, capture_output=True, text=True,
                          env=dict(os.environ), timeout=900)


@pytest.fixture
def user_dir(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The user's folder: their model file, and CONVSCOPE_DATA naming the real MNIST files."""
    monkeypatch.setenv("CONVSCOPE_DATA", str(data_dir))
    (tmp_path / "usermodels.py").write_text(USER_MODELS)
    return tmp_path


@pytest.mark.parametrize("factory", ["functional", "resnet"])
def test_a_users_model_trains_on_an_rgb_folder_and_its_run_is_reported_and_diagnosed(user_dir, rgb_folder, factory):
    proc = cli(user_dir, "train", "--model", f"usermodels:{factory}", "--dataset", str(rgb_folder),
               "--limit-train", "1024", "--bs", "128", "--lr", "0.01", "--device", "cpu", "--name", "r")
    assert proc.returncode == 0, proc.stderr
    run = user_dir / "runs" / "r"
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == f"usermodels:{factory}"
    assert config["data"]["in_channels"] == 3 and config["data"]["image_size"] == [32, 32]
    # the checkpoint holds the user's layers, not the book's CNN
    weights = load_file(run / "checkpoint" / "model.safetensors")
    first = "c1.weight" if factory == "functional" else "0.weight"
    assert weights[first].shape[1] == 3
    assert not any(k.startswith("conv1.") for k in weights)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1 and metrics[0]["accuracy"] > 0.1  # 8 steps from chance (0.1) on 10 classes
    (run / "report.html").unlink()
    (run / "findings.json").unlink()
    assert cli(user_dir, "report", str(run)).returncode == 0
    assert (run / "report.html").stat().st_size > 0
    diagnosed = cli(user_dir, "diagnose", str(run))
    assert diagnosed.returncode == 0, diagnosed.stderr
    assert (run / "findings.json").exists()


RESUME_WORKER = '''
import os, signal, sys
from convscope.config import TrainConfig
from convscope.experiments.run import run_training
from convscope.train.callback import Callback


class StopAt(Callback):
    """Signals this process at step 5, as Ctrl-C would: training stops at the next batch, saved."""

    def after_batch(self):
        if self.learn.training and self.learn.train_iter == 5:
            os.kill(os.getpid(), signal.SIGINT)


cfg = TrainConfig(model="usermodels:functional", dataset=sys.argv[1], limit_train=1024, bs=128, epochs=2, lr=0.01,
                  device="cpu", out="runs", name="stopped")
result = run_training(cfg, cbs=[StopAt()])
sys.exit(0 if result.interrupted == signal.SIGINT else 1)
'''


def test_resume_of_a_users_model_rebuilds_it_and_ends_as_an_uninterrupted_run(user_dir, rgb_folder):
    """Stopped at step 5 of 16, resumed by the command line from its config.json: the weights equal those of a
    run that never stopped, bit for bit (dropout's random numbers included)."""
    common = ("--model", "usermodels:functional", "--dataset", str(rgb_folder), "--limit-train", "1024", "--bs",
              "128", "--epochs", "2", "--lr", "0.01", "--device", "cpu")
    straight = cli(user_dir, "train", *common, "--name", "straight")
    assert straight.returncode == 0, straight.stderr
    (user_dir / "worker.py").write_text(RESUME_WORKER)
    stopped = subprocess.run([sys.executable, "worker.py", str(rgb_folder)], cwd=user_dir, capture_output=True,
                             text=True, env=dict(os.environ), timeout=900)
    assert stopped.returncode == 0, stopped.stderr
    run = user_dir / "runs" / "stopped"
    assert 0 < json.loads((run / "checkpoint" / "state.json").read_text())["train_iter"] < 16  # stopped part-way
    resumed = cli(user_dir, "train", "--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr
    a = load_file(user_dir / "runs" / "straight" / "checkpoint" / "model.safetensors")
    b = load_file(run / "checkpoint" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_summary_prints_the_layers_of_a_users_model(user_dir):
    proc = cli(user_dir, "summary", "--model", "usermodels:resnet", "--in-channels", "3", "--input-size", "32")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for layer in ("0", "3.conv1", "3.bn2", "4.skip.0", "5.conv2", "8"):
        assert f" {layer} " in f" {out} ".replace("\n", " "), layer
    # parameters, computed by hand: stem 3*16*9 + BN 2*16; blocks (ni*nf*9 + nf*nf*9 + 4*nf [+ ni*nf + 2*nf]);
    # head 64*10 + 10
    stem = 3 * 16 * 9 + 2 * 16
    b1 = 16 * 16 * 9 * 2 + 4 * 16
    b2 = 16 * 32 * 9 + 32 * 32 * 9 + 4 * 32 + 16 * 32 + 2 * 32
    b3 = 32 * 64 * 9 + 64 * 64 * 9 + 4 * 64 + 32 * 64 + 2 * 64
    total = stem + b1 + b2 + b3 + 64 * 10 + 10
    assert f"{total:,}" in out


# --- bad factories, one line each (the CLI rows are in docs/bad_inputs.md) ---------------------------------

BAD = '''
from torch import nn

NUMBER = 3

def raises(in_channels, n_classes):
    raise ValueError(f"no model for {in_channels} channels")

def not_a_module(in_channels, n_classes):
    return [nn.Linear(3, n_classes)]

def wrong_shape(in_channels, n_classes):
    return nn.Conv2d(in_channels, n_classes, 3)

def positional_only(channels, classes):
    return nn.Flatten()
'''
INFO = {"in_channels": 1, "image_size": [28, 28], "classes": list(range(10))}


@pytest.mark.parametrize("factory, message", [
    ("bad_factories_t:raises", "model factory 'bad_factories_t:raises' raised ValueError: no model for 1 channels "
                               "when called as raises(in_channels=1, n_classes=10)"),
    ("bad_factories_t:positional_only", "raised TypeError: positional_only() got an unexpected keyword argument"),
    ("bad_factories_t:not_a_module", "model factory 'bad_factories_t:not_a_module' returned a list when called as "
                                     "not_a_module(in_channels=1, n_classes=10), not a torch.nn.Module"),
    ("bad_factories_t:wrong_shape", "the model of factory 'bad_factories_t:wrong_shape' gives output [2, 10, 26, 26] "
                                    "for a batch of shape [2, 1, 28, 28]; expected [2, 10] (one logit per class)"),
    ("bad_factories_t:NUMBER", "model factory 'bad_factories_t:NUMBER': bad_factories_t.NUMBER is not callable "
                               "(an object of type int)"),
    ("bad_factories_t:nothing", "model factory 'bad_factories_t:nothing': bad_factories_t has no attribute "
                                "'nothing'"),
    ("no_such_module_t:net", "cannot import module 'no_such_module_t' (ModuleNotFoundError: No module named "
                             "'no_such_module_t')"),
])
def test_bad_factories_are_one_config_error(tmp_path, monkeypatch, factory, message):
    (tmp_path / "bad_factories_t.py").write_text(BAD)
    monkeypatch.chdir(tmp_path)  # the current folder is importable, as for the command line
    monkeypatch.delitem(sys.modules, "bad_factories_t", raising=False)
    with pytest.raises(ConfigError) as info:
        build_model(TrainConfig(model=factory), INFO, torch.device("cpu"))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("spec", ["mymodels", "mymodels:", ":net", "my-models:net", "a:b:c", 3])
def test_a_model_setting_that_is_not_module_colon_factory_is_refused(spec):
    with pytest.raises(ConfigError, match="model must be MODULE:FACTORY such as mymodels:resnet"):
        TrainConfig(model=spec)


def test_the_default_model_is_the_books_cnn_whatever_the_meta_estimate_did():
    """The estimate builds a copy on the meta device first; the real model must still draw the weights it drew
    before (seeded runs unchanged), compared with simple_cnn built straight after the same seed."""
    from convscope.models.cnn import simple_cnn

    torch.manual_seed(3)
    model = build_model(TrainConfig(), INFO, torch.device("cpu"))
    torch.manual_seed(3)
    book = simple_cnn()
    assert model.state_dict().keys() == book.state_dict().keys()
    for key, value in book.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key



COUNTED = '''
from pathlib import Path

from usermodels import functional


def counted(in_channels, n_classes):
    """usermodels.functional, noting each call's arguments in built.txt."""
    with Path("built.txt").open("a") as f:
        f.write(f"{in_channels} {n_classes}\\n")
    return functional(in_channels=in_channels, n_classes=n_classes)
'''


def test_lr_find_sweeps_a_users_model(user_dir):
    (user_dir / "counting.py").write_text(COUNTED)
    proc = cli(user_dir, "lr-find", "--model", "counting:counted", "--num-it", "5", "--repeats", "1", "--bs", "128",
               "--device", "cpu", "--name", "lr")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((user_dir / "runs" / "lr" / "config.json").read_text())["model"] == "counting:counted"
    assert (user_dir / "runs" / "lr" / "lr_find.json").exists()
    # built twice: once on the meta device for the memory estimate, once for real; MNIST: 1 channel, 10 classes
    assert (user_dir / "built.txt").read_text().splitlines() == ["1 10", "1 10"]


def test_bs_sweep_trains_a_users_model_at_each_batch_size(user_dir):
    (user_dir / "counting.py").write_text(COUNTED)
    proc = cli(user_dir, "bs-sweep", "--model", "counting:counted", "--bs", "128,256", "--limit-train", "1024",
               "--device", "cpu", "--name", "sweep")
    assert proc.returncode == 0, proc.stderr
    for bs in (128, 256):
        config = json.loads((user_dir / "runs" / "sweep" / f"bs{bs}" / "config.json").read_text())
        assert config["model"] == "counting:counted" and config["bs"] == bs
    # the check in the sweep's own process, then each setting's process: meta copy and real model each time
    assert (user_dir / "built.txt").read_text().splitlines() == ["1 10"] * 6


def test_a_bad_model_stops_a_bs_sweep_before_its_folder_exists(data_dir, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from convscope.cli import app

    monkeypatch.setenv("CONVSCOPE_DATA", str(data_dir))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["bs-sweep", "--model", "no_such_models_t:net", "--bs", "128", "--device", "cpu",
                                      "--limit-train", "1024", "--name", "sweep"])
    assert result.exit_code == 2
    assert result.stderr.strip().startswith("error: model factory 'no_such_models_t:net': cannot import module")
    assert not (tmp_path / "runs").exists()


def test_a_sweep_settings_process_reports_a_bad_model_in_one_line(user_dir):
    """A setting's own process (the GPU case, where only it checks the memory) prints its refusal as one line."""
    spec = {"train": TrainConfig(model="no_such_models_t:net", device="cpu", limit_train=1024, bs=128,
                                 out=str(user_dir / "runs")).to_dict(), "gns_every": 1, "threads": 1}
    proc = subprocess.run([sys.executable, "-m", "convscope.experiments.bs_sweep", json.dumps(spec)], cwd=user_dir,
                          capture_output=True, text=True, env=dict(os.environ), timeout=900)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: model factory 'no_such_models_t:net': cannot import module")
    assert "\n" not in proc.stderr.strip() and "Traceback" not in proc.stderr
    assert not (user_dir / "runs").exists()


@pytest.mark.parametrize("flag", [["--channels", "16,32"], ["--no-bn"]])
def test_simple_cnn_settings_beside_a_users_model_are_refused_not_ignored(tmp_path, monkeypatch, flag):
    from typer.testing import CliRunner

    from convscope.cli import app

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["train", "--model", "usermodels:resnet", *flag, "--device", "cpu"])
    assert result.exit_code == 2
    assert result.stderr.strip() == (f"error: {flag[0]} shapes convscope's simple_cnn and does nothing with --model "
                                     "usermodels:resnet: set the layers in your factory instead")
    assert not (tmp_path / "runs").exists()
