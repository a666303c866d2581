"""TensorBoard event files, read back by TensorBoard's own reader and its own server.

One real training run (the first 4,096 MNIST images, bs 32, one epoch: 128 steps, statistics every 4th
step) through `run_training` with `tensorboard=` set, as `convscope train --tensorboard` does. Every layer's
scalars and histograms in the event files are compared with stats.npz read by numpy alone, the losses with
steps.npz, the epoch metrics with metrics.jsonl, and the findings with findings.json. A probe callback looks
at the event files mid-run to see that they are written while the run trains.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorboard", reason="needs the tensorboard extra: pip install 'convscope[tensorboard]'")

from tensorboard.backend.event_processing import event_accumulator  # noqa: E402

from convscope.train.callback import Callback  # noqa: E402

EVERY_ROWS, N_TRAIN, BS = 4, 4096, 32  # 128 steps; TensorBoard writes at steps 50, 100 and the epoch's end
SERIES = ("mean", "std", "near_zero", "abs_near_zero", "negative", "dead", "grad_norm", "update_ratio")


def read_events(folder: Path) -> event_accumulator.EventAccumulator:
    acc = event_accumulator.EventAccumulator(str(folder), size_guidance={
        event_accumulator.SCALARS: 0, event_accumulator.HISTOGRAMS: 0, event_accumulator.TENSORS: 0})
    acc.Reload()
    return acc


class PeekAtEvents(Callback):
    """At step 60 (after the write at step 50), read what the event files hold so far."""

    order = 100

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.seen: dict[str, list[int]] = {}

    def after_batch(self) -> None:
        if self.learn.training and self.learn.train_iter == 60:
            acc = read_events(self.folder)
            self.seen = {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
            self.seen.update({tag: [e.step for e in acc.Histograms(tag)] for tag in acc.Tags()["histograms"]})


@pytest.fixture(scope="module")
def board_run(data_dir, tmp_path_factory):
    from convscope.config import TrainConfig
    from convscope.experiments import run_training

    root = tmp_path_factory.mktemp("tb")
    peek = PeekAtEvents(root / "tb" / "r")
    cfg = TrainConfig(dataset="mnist", data_root=str(data_dir), limit_train=N_TRAIN, bs=BS, device="cpu",
                      stats_every=EVERY_ROWS, out=str(root / "runs"), name="r", tensorboard=str(root / "tb"))
    result = run_training(cfg, cbs=[peek])
    return result.run_dir, root / "tb" / "r", peek


def test_event_files_are_written_while_the_run_trains(board_run):
    _, _, peek = board_run
    assert peek.seen, "no event files at step 60"
    assert peek.seen["train/loss"] == list(range(50))  # the write at step 50: steps 0..49, nothing later
    assert peek.seen["mean/conv1.conv"] == list(range(0, 50, EVERY_ROWS))
    assert peek.seen["hist/conv2.act"] == list(range(0, 50, EVERY_ROWS))


def test_every_layer_scalars_and_histograms_equal_stats_npz(board_run):
    run_dir, tb_dir, _ = board_run
    acc = read_events(tb_dir)
    with np.load(run_dir / "stats.npz") as npz:
        saved = {k: npz[k] for k in npz.files}
    layers = [str(n) for n in saved["layers"]]
    assert len(layers) == 14 and len(saved["steps"]) == 128 // EVERY_ROWS
    for j, layer in enumerate(layers):
        for name in SERIES:
            values = saved[name][:, j]
            finite = np.isfinite(values)
            tag = f"{name}/{layer}"
            if not finite.any():  # a ReLU has no gradient of its own: no series at all
                assert tag not in acc.Tags()["scalars"]
                continue
            events = acc.Scalars(tag)
            assert [e.step for e in events] == saved["steps"][finite].tolist(), tag
            np.testing.assert_allclose([e.value for e in events], values[finite], rtol=1e-6, err_msg=tag)
        lo, hi = saved["hist_range"][j]
        limits = lo + (hi - lo) * np.arange(1, saved["hist"].shape[-1] + 1) / saved["hist"].shape[-1]
        events = acc.Histograms(f"hist/{layer}")
        assert [e.step for e in events] == saved["steps"].tolist()
        for event, counts in zip(events, saved["hist"][:, j]):
            h = event.histogram_value
            np.testing.assert_array_equal(h.bucket, counts)  # the recorded counts, bin for bin
            np.testing.assert_allclose(h.bucket_limit, limits, rtol=1e-12)
            assert (h.min, h.max, h.num) == (lo, hi, counts.sum())


def test_losses_metrics_and_findings_equal_the_run_files(board_run):
    run_dir, tb_dir, _ = board_run
    acc = read_events(tb_dir)
    with np.load(run_dir / "steps.npz") as steps:
        loss, lr, mom = steps["loss"], steps["lr"], steps["mom"]
    for tag, values in (("train/loss", loss), ("train/lr", lr), ("train/momentum", mom)):
        events = acc.Scalars(tag)
        assert [e.step for e in events] == list(range(128))
        np.testing.assert_allclose([e.value for e in events], values, rtol=1e-6)
    (row,) = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    (event,) = acc.Scalars("epoch/accuracy")
    assert event.step == 127 and event.value == pytest.approx(row["accuracy"], rel=1e-6)
    (text,) = acc.Tensors("findings/text_summary")
    table = text.tensor_proto.string_val[0].decode()
    for finding in json.loads((run_dir / "findings.json").read_text()):
        assert f"| {finding['severity']} | {finding['rule']} |" in table


def test_export_tensorboard_writes_the_same_events_and_never_writes_twice(board_run, tmp_path):
    from typer.testing import CliRunner

    from convscope.cli import app

    run_dir, tb_dir, _ = board_run
    result = CliRunner().invoke(app, ["export-tensorboard", str(run_dir), str(tmp_path / "tb")])
    assert result.exit_code == 0, result.output
    live, exported = read_events(tb_dir), read_events(tmp_path / "tb" / run_dir.name)
    assert sorted(exported.Tags()["scalars"]) == sorted(live.Tags()["scalars"])
    for tag in ("train/loss", "near_zero/conv3.bn", "update_ratio/conv5.conv"):
        assert [(e.step, e.value) for e in exported.Scalars(tag)] == [(e.step, e.value) for e in live.Scalars(tag)]
    before = sorted(p.name for p in (tmp_path / "tb" / run_dir.name).iterdir())
    again = CliRunner().invoke(app, ["export-tensorboard", str(run_dir), str(tmp_path / "tb")])
    assert again.exit_code == 2 and "already exists and is not empty" in again.output
    assert sorted(p.name for p in (tmp_path / "tb" / run_dir.name).iterdir()) == before


def test_a_missing_tensorboard_is_one_line_before_anything_is_written(tmp_path, board_run):
    """`tensorboard` made unimportable (a package of that name that raises): exit 2, one line, no folder."""
    run_dir, _, _ = board_run
    fake = tmp_path / "fake" / "tensorboard"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no tensorboard here')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "convscope", "export-tensorboard", str(run_dir), str(tmp_path / "tb")],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: TensorBoard is not installed (no tensorboard here), so no event files can be written: "
        "pip install 'convscope[tensorboard]' (or pip install tensorboard)"]
    assert not (tmp_path / "tb").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_real_tensorboard_server_serves_the_loss_series(board_run):
    run_dir, tb_dir, _ = board_run
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(tb_dir.parent),
                               "--host", "127.0.0.1", "--port", str(port), "--reload_interval", "0"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    query = urllib.parse.urlencode({"run": tb_dir.name, "tag": "train/loss"})
    url = f"http://127.0.0.1:{port}/data/plugin/scalars/scalars?{query}"
    try:
        series = None
        for _ in range(600):  # the server starts and loads the folder within seconds; give up only if it died
            if server.poll() is not None:
                pytest.fail(f"tensorboard exited with {server.returncode}: {server.stderr.read()[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    series = json.loads(response.read())
                if series:
                    break
            except (urllib.error.URLError, ConnectionError, json.JSONDecodeError):
                pass
            time.sleep(0.2)
    finally:
        server.terminate()
        server.wait(timeout=30)
    with np.load(run_dir / "steps.npz") as steps:
        loss = steps["loss"]
    assert series is not None and [s for _, s, _ in series] == list(range(128))
    np.testing.assert_allclose([v for _, _, v in series], loss, rtol=1e-6)


def test_watch_writes_the_same_statistics_as_its_run_folder(mnist_tensors, tmp_path):
    """A hand-written loop under watch(..., tensorboard=): 64 steps (a write at step 50 and at close)."""
    import torch
    import torch.nn.functional as F

    import convscope
    from convscope.models import simple_cnn

    torch.manual_seed(0)
    x, y = mnist_tensors[0][:64 * 32], mnist_tensors[1][:64 * 32]
    model = simple_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with convscope.watch(model, run_dir=tmp_path / "run", every=4, tensorboard=tmp_path / "tb") as w:
        for k in range(64):
            loss = F.cross_entropy(model(x[32 * k:32 * (k + 1)]), y[32 * k:32 * (k + 1)])
            loss.backward()
            opt.step()
            w.step(loss)
            opt.zero_grad()
        w.log(epoch=0, accuracy=0.5)
    acc = read_events(tmp_path / "tb")
    with np.load(tmp_path / "run" / "stats.npz") as npz:
        layers, steps, std, hist = [str(n) for n in npz["layers"]], npz["steps"], npz["std"], npz["hist"]
    assert steps.tolist() == list(range(0, 64, 4))
    for j, layer in enumerate(layers):
        events = acc.Scalars(f"std/{layer}")
        assert [e.step for e in events] == steps.tolist()
        np.testing.assert_allclose([e.value for e in events], std[:, j], rtol=1e-6)
        assert [list(e.histogram_value.bucket) for e in acc.Histograms(f"hist/{layer}")] == hist[:, j].tolist()
    with np.load(tmp_path / "run" / "steps.npz") as npz:
        np.testing.assert_allclose([e.value for e in acc.Scalars("train/loss")], npz["loss"], rtol=1e-6)
    assert [(e.step, e.value) for e in acc.Scalars("epoch/accuracy")] == [(63, 0.5)]


def test_the_learner_callback_alone_writes_its_findings(mnist_tensors, tmp_path):
    """TensorBoard in a plain Learner (no run folder): the run is diagnosed from the learner at the end."""
    import torch

    import convscope
    from convscope.data.batches import DeviceBatches
    from convscope.models import simple_cnn

    torch.manual_seed(0)
    x, y, xt, yt = mnist_tensors
    train = DeviceBatches(x[:1024], y[:1024], bs=64, shuffle=True, drop_last=True)
    valid = DeviceBatches(xt[:256], yt[:256], bs=256)
    learn = convscope.Learner(simple_cnn(), train, valid, cbs=[convscope.ActivationStats(every=2),
                                                                convscope.TensorBoard(tmp_path / "tb", every=5)])
    learn.fit_one_cycle(1, 0.01)
    acc = read_events(tmp_path / "tb")
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(16))
    assert [e.step for e in acc.Scalars("dead/conv4.act")] == list(range(0, 16, 2))
    (text,) = acc.Tensors("findings/text_summary")
    table = text.tensor_proto.string_val[0].decode().splitlines()
    assert table[0] == "| severity | rule | layer | steps | evidence | remedy |" and len(table) >= 3
    assert all(row.split(" | ")[0].lstrip("| ") in ("high", "medium", "low", "info") for row in table[2:])


def test_a_resumed_run_replaces_what_the_interrupted_one_wrote_after_its_checkpoint(tmp_path):
    """RunEvents(purge_step=5): TensorBoard drops the first writer's steps >= 5, so no step is doubled."""
    from convscope.tensorboard import RunEvents

    first = RunEvents(tmp_path)
    first.add_steps({"step": np.arange(10), "loss": np.full(10, 1.0)})
    first.close()
    resumed = RunEvents(tmp_path, purge_step=5)
    resumed.add_steps({"step": np.arange(10), "loss": np.full(10, 2.0)})  # the whole run as it stands
    resumed.close()
    events = read_events(tmp_path).Scalars("train/loss")
    assert [(e.step, e.value) for e in events] == [(k, 1.0) for k in range(5)] + [(k, 2.0) for k in range(5, 10)]
