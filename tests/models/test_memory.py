"""The training-memory estimate against independent measures, and the refusal of a model that cannot fit."""

from __future__ import annotations

import importlib.util
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from convscope.cli import app
from convscope.config import OPTIMIZER_NAMES
from convscope.models.cnn import simple_cnn
from convscope.models.memory import OPTIMIZER_STATE_COPIES, MemoryEstimate, check_fits, estimate_training_memory

FLOAT = 4
USER_MODELS = (Path(__file__).parent / "usermodels.py").read_text()  # a user's own model file


def saved_tensor_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Independent measure: bytes of the distinct storages autograd saves in one real training step's forward
    pass on `x`, the model's own parameters and buffers left out (what the backward pass keeps alive)."""
    own = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in own:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.train()(x)
    return sum(storages.values())


def user_models(tmp_path: Path):
    path = tmp_path / "usermodels_mem.py"
    path.write_text(USER_MODELS)
    spec = importlib.util.spec_from_file_location("usermodels_mem", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_estimate_of_the_books_cnn_is_the_hand_count():
    """simple_cnn on 1x28x28, counted by hand: autograd keeps the input of each conv (the image, then each
    block's BN output) and each block's ReLU output (also the BN's input); the last block has no ReLU, and its
    BN keeps the conv's output; flatten is a view of the last BN output, which nothing needs for backward."""
    grids = [(8, 14), (16, 7), (32, 4), (64, 2)]
    per_image = 28 * 28 + sum(2 * c * g * g for c, g in grids) + 10
    assert per_image == 7034
    params = 30542  # the book's count (tests/test_cli.py checks the summary prints it)
    bn_channels = 8 + 16 + 32 + 64 + 10
    buffers = 2 * bn_channels * FLOAT + 5 * 8  # running mean and var, and an int64 batch counter per BN
    for opt, copies in (("adamw", 2), ("sgd", 1)):
        est = estimate_training_memory(simple_cnn(), (1, 28, 28), bs=512, opt=opt)
        assert est.act_per_sample == per_image * FLOAT
        assert est.params == params * FLOAT + buffers
        assert est.grads == params * FLOAT
        assert est.opt_state == copies * params * FLOAT
        assert est.total == est.params + est.grads + est.opt_state + est.act_fixed + 512 * per_image * FLOAT


def test_every_optimizer_has_its_state_counted():
    assert sorted(OPTIMIZER_STATE_COPIES) == sorted(OPTIMIZER_NAMES)


@pytest.mark.parametrize("name", ["book", "functional", "resnet"])
def test_the_estimate_on_the_meta_device_matches_the_saved_tensors_of_a_real_batch(name, tmp_path, data_dir):
    """Built on the meta device (nothing allocated) and measured at batches of 2 and 4, scaled to 256 images:
    within 2% of what autograd really keeps for 256 real images (Fashion-MNIST; padded to 3x32x32 for the
    users' models). The tolerance covers tensors the two count differently (a view saved beside its base)."""
    from convscope.data.batches import normalize_images
    from convscope.data.sources import load_dataset

    images = load_dataset("fashion-mnist", root=data_dir).train_images[:256]
    x, _, _ = normalize_images(images)
    if name == "book":
        make, shape = simple_cnn, (1, 28, 28)
    else:
        module = user_models(tmp_path)
        make = lambda: getattr(module, name)(in_channels=3, n_classes=10)  # noqa: E731
        x, shape = torch.nn.functional.pad(x, (2, 2, 2, 2)).repeat(1, 3, 1, 1), (3, 32, 32)
    with torch.device("meta"):
        meta_model = make()
    est = estimate_training_memory(meta_model, shape, bs=256, opt="adamw")
    real = make()
    real(x[:2])  # gives the lazy head its shape, as the shape check of build_model does
    measured = saved_tensor_bytes(real, x)
    assert est.activations == pytest.approx(measured, rel=0.02)
    assert est.params == sum(t.numel() * t.element_size() for t in (*real.parameters(), *real.buffers()))


def test_a_model_too_big_for_memory_is_refused_before_anything_is_allocated(data_dir, tmp_path, monkeypatch):
    """--channels 100000 at bs 512: ~75 GiB of activations. Refused with the estimate, its parts, the limit and
    what to change; exit 2; no run folder."""
    monkeypatch.setenv("CONVSCOPE_DATA", str(data_dir))
    result = CliRunner().invoke(app, ["train", "--channels", "100000,16,32,64", "--device", "cpu", "--out",
                                      str(tmp_path / "runs"), "--name", "r"])
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert "\n" not in line and "Traceback" not in result.output
    assert line.startswith("error: training needs about ")
    for part in ("at bs 512", "parameters ", "gradients ", "AdamW state ", "activations kept for backward ",
                 "per image", "more than the ", "available on the CPU", "use --bs "):
        assert part in line, part
    # 100000 x 14 x 14 floats, twice (ReLU output and BN output), per image: the estimate says at least that
    per_image_gib = 2 * 100000 * 14 * 14 * FLOAT / 2**30
    total = float(line.split("training needs about ")[1].split(" GiB")[0])
    assert total >= 512 * per_image_gib
    assert not (tmp_path / "runs" / "r").exists()


def test_the_suggested_batch_size_is_the_largest_that_fits():
    est = MemoryEstimate(bs=512, opt="adamw", params=100, grads=100, opt_state=200, act_fixed=600,
                         act_per_sample=1000)
    assert est.total == 1000 + 512 * 1000
    with pytest.raises(Exception, match=r"use --bs 40 or less"):
        check_fits(est, torch.device("cpu"), available=lambda d: (1000 + 40 * 1000 + 999, "test"))
    check_fits(est, torch.device("cpu"), available=lambda d: (est.total, "test"))  # exactly fits: no error
    with pytest.raises(Exception, match=r"does not fit even at --bs 1"):
        check_fits(est, torch.device("cpu"), available=lambda d: (1999, "test"))


def _meminfo_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


LIMIT = 2 * 2**30


@pytest.mark.skipif(not Path("/proc/meminfo").exists(), reason="needs Linux's /proc/meminfo")
def test_the_refusal_uses_the_address_space_limit(data_dir, tmp_path):
    """Under RLIMIT_AS = 2 GiB, a model that needs ~3 GiB (4000 filters in the first conv, bs 512) is refused,
    naming the limit, although the machine has the memory; the book's CNN trains under the same limit."""
    if _meminfo_available() < 6 * 2**30:
        pytest.skip("needs 6 GiB available, so that only the address-space limit can refuse")

    def limited(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "convscope", "train", "--device", "cpu", "--limit-train",
                               "1024", "--bs", "512", "--out", str(tmp_path / "runs"), *args],
                              preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT)),
                              capture_output=True, text=True, env=dict(os.environ, CONVSCOPE_DATA=str(data_dir)),
                              timeout=900)

    refused = limited("--channels", "4000,16,32,64", "--name", "big")
    assert refused.returncode == 2, refused.stderr
    line = refused.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert "left under the address-space limit RLIMIT_AS 2.0 GiB" in line, line
    free = line.split("more than the ")[1].split(" left under")[0]
    value, unit = free.split()
    assert float(value) * {"GiB": 2**30, "MiB": 2**20}[unit] < LIMIT
    assert not (tmp_path / "runs" / "big").exists()
    book = limited("--name", "book")
    assert book.returncode == 0, book.stderr


@pytest.mark.parametrize("room_for, expected_valid_bs", [(300, 300), (64, 64), (5000, 1024)])
def test_validation_batches_shrink_to_what_memory_allows(monkeypatch, room_for, expected_valid_bs):
    """bs 64 with 2000 filters in the first conv: the 1024-image validation batches shrink to the largest batch
    that fits (never below bs), computed here by hand: per image the image and twice each block's grid (ReLU
    and BN outputs) plus the last BN's input; fixed: parameters, gradients, AdamW's two copies, the BN buffers
    and each BN's saved mean and inverse std."""
    from convscope.config import TrainConfig
    from convscope.data.batches import DeviceBatches
    from convscope.experiments.setup import build_model
    from convscope.models import memory

    channels = (2000, 16, 32, 64)
    grids = [(2000, 14), (16, 7), (32, 4), (64, 2)]
    per_image = (28 * 28 + sum(2 * c * g * g for c, g in grids) + 10) * FLOAT
    n_params = sum(p.numel() for p in simple_cnn(channels=channels).parameters())
    bn = sum(channels) + 10
    fixed = 4 * n_params * FLOAT + (2 * bn * FLOAT + 5 * 8) + 2 * bn * FLOAT
    monkeypatch.setattr(memory, "available_memory", lambda device: (fixed + room_for * per_image, "test"))
    valid = DeviceBatches(torch.zeros(2048, 1, 28, 28), torch.zeros(2048, dtype=torch.int64), 1024)
    info = {"in_channels": 1, "image_size": [28, 28], "classes": list(range(10))}
    build_model(TrainConfig(channels=channels, bs=64), info, torch.device("cpu"), valid)
    assert valid.bs == expected_valid_bs
