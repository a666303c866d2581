"""Commands that cannot split across processes refuse at once under torchrun (never hang), and the
set-up checks of a multi-process run. The environment torchrun gives each process (RANK, WORLD_SIZE) is
set by hand here, so no process group is started."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from convscope.config import TrainConfig
from convscope.errors import ConfigError
from convscope.experiments.run import per_rank_batch


@pytest.mark.parametrize("command", [["lr-find"], ["bs-sweep"], ["lr-study"], ["train", "--nproc", "2"]])
def test_single_process_commands_refuse_under_torchrun(command, tmp_path, data_dir):
    env = dict(os.environ, RANK="0", WORLD_SIZE="2", LOCAL_RANK="0", CONVSCOPE_DATA=str(data_dir))
    proc = subprocess.run([sys.executable, "-m", "convscope", *command, "--out", str(tmp_path / "o")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "single process" in lines[0] or "inside torchrun" in lines[0]
    assert not (tmp_path / "o").exists()


def test_freeze_refuses_several_processes_before_any_process_group(tmp_path, data_dir):
    """DDP expects every parameter's gradient at each step, so --freeze says so under torchrun, at once (no
    rendezvous is started: only this one process exists here), and writes nothing."""
    env = dict(os.environ, RANK="0", WORLD_SIZE="2", LOCAL_RANK="0", CONVSCOPE_DATA=str(data_dir))
    proc = subprocess.run([sys.executable, "-m", "convscope", "train", "--freeze", "conv1=0.5", "--out",
                           str(tmp_path / "o")], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: freeze does not work with several processes yet (DDP expects every parameter's gradient "
        "at each step); train on one process or drop the freeze setting"]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("world, expected", [(1, 512), (2, 256), (4, 128)])
def test_resume_keeps_the_global_batch_whatever_the_process_count(tmp_path, world, expected):
    (tmp_path / "config.json").write_text(json.dumps({"bs": 256, "data": {"world_size": 2, "global_bs": 512}}))
    assert per_rank_batch(TrainConfig(bs=256), tmp_path, world).bs == expected


def test_resume_refuses_a_process_count_that_cannot_split_the_global_batch(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"bs": 256, "data": {"world_size": 2, "global_bs": 512}}))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ConfigError, match="3 processes cannot split evenly"):
        per_rank_batch(TrainConfig(bs=256), tmp_path, 3)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # the run folder is untouched
