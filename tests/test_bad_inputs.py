"""The bad-input catalogue, docs/bad_inputs.md, run row by row.

The table is the single source of each row's command (or Python call), exact error line and exit code; this
module reads it and holds only what the table cannot: how to prepare each input (`SETUPS`, keyed by the
row's input column) and, for the rows where files legitimately change, what must still hold. For every row
it checks the exact line, the exit code, that no traceback is printed, and that no file that existed before
was added, changed or removed (unless the row's setup says what changes).
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from convscope.cli import app
from convscope.errors import ConvscopeError

DOC = Path(__file__).resolve().parents[1] / "docs" / "bad_inputs.md"
N_TRAIN, N_TEST = 1024, 256  # the tiny MNIST subset every row starts from


# --- the table ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One row of docs/bad_inputs.md."""

    number: int
    input: str
    call: str  # the last code span of "how to reproduce": a `convscope ...` command or a Python call
    line: str  # the exact error line; "…" matches any text
    exit_code: int | None  # None: a Python call, which raises instead of exiting
    kept: str

    @property
    def key(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.input.lower()).strip("-")

    @property
    def id(self) -> str:
        return f"{self.number:02d}-{self.key}"


def code_spans(cell: str) -> list[str]:
    """Markdown code spans of a table cell (`x` or ``x with `ticks` ``), without their fences."""
    spans = []
    for match in re.finditer(r"(`+)(.+?)\1(?!`)", cell):
        text = match.group(2)
        spans.append(text[1:-1] if len(text) > 2 and text[0] == text[-1] == " " else text)
    return spans


def parse_catalogue(text: str) -> list[Row]:
    rows = []
    for line in text.splitlines():
        if not re.match(r"\|\s*\d+\s*\|", line):
            continue
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        number, what, how, printed, code, kept = cells
        rows.append(Row(int(number), what, code_spans(how)[-1], code_spans(printed)[0],
                        None if code in ("—", "-") else int(code), kept))
    return rows


ROWS = parse_catalogue(DOC.read_text())


# --- preparing the inputs -------------------------------------------------------------------------------


@dataclass
class Case:
    """One row's working folder and what its setup asked for."""

    tmp: Path
    monkeypatch: pytest.MonkeyPatch
    tiny_run: Path
    tiny_run2: Path
    namespace: dict[str, Any] = field(default_factory=dict)  # names a Python row's call may use
    real_process: bool = False  # run the command in a fresh `python -m convscope` process
    check: Callable[[dict[str, str], dict[str, str]], None] | None = None  # replaces "nothing changed"

    @property
    def data(self) -> Path:
        return self.tmp / "data"

    @property
    def mnist(self) -> Path:
        return self.data / "mnist"

    @property
    def run(self) -> Path:
        return self.tmp / "runs" / "r"

    @property
    def run2(self) -> Path:
        return self.tmp / "runs" / "r2"

    def copy_run(self) -> Path:
        shutil.copytree(self.tiny_run, self.run)
        return self.run

    def copy_run2(self) -> Path:
        shutil.copytree(self.tiny_run2, self.run2)
        return self.run2

    def fill(self, text: str) -> str:
        return (text.replace("<run>", str(self.run)).replace("<run2>", str(self.run2)).replace("<data>", str(self.data))
                .replace("<tmp>", str(self.tmp)))

    def unreadable(self, path: Path, opener: tuple[Any, str]) -> None:
        """chmod 000 `path`; as root (whom chmod does not stop) also make `opener` refuse it with EACCES."""
        path.chmod(0)
        owner, name = opener
        real = getattr(owner, name)

        def refusing(target: Any, *args: Any, **kwargs: Any) -> Any:
            if Path(target) == path:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return real(target, *args, **kwargs)

        if os.geteuid() == 0:
            self.monkeypatch.setattr(owner, name, refusing)


SETUPS: dict[str, Callable[[Case], None]] = {}


def setup(*keys: str) -> Callable[[Callable[[Case], None]], Callable[[Case], None]]:
    def register(fn: Callable[[Case], None]) -> Callable[[Case], None]:
        for key in keys:
            SETUPS[key] = fn
        return fn

    return register


@setup("dataset-folder-that-does-not-exist", "dataset-path-is-a-file", "data-root-is-a-file", "lr-0", "negative-lr",
       "lr-nan", "bs-0", "bs-larger-than-the-dataset", "epochs-0", "pct-start-outside-0-1-in-a-config",
       "unknown-schedule", "unknown-dataset", "unknown-device", "checkpoint-every-0", "limit-train-0",
       "channels-not-numbers", "channels-with-a-zero", "run-name-that-is-a-path", "out-is-a-file",
       "out-below-a-file", "resume-of-a-missing-run", "resume-of-a-folder-that-is-not-a-run",
       "report-of-a-missing-run", "diagnose-of-a-folder-that-is-not-a-run", "unknown-recipe", "nproc-0",
       "momentum-outside-0-1-in-a-config", "lr-divisor-below-1-in-a-config", "unknown-optimizer-in-a-config",
       "label-smoothing-of-1-in-a-config", "unknown-model-head", "unknown-model-head-in-a-config",
       "crop-larger-than-the-images", "crop-0", "freeze-of-a-layer-the-model-lacks", "freeze-without-a-fraction",
       "freeze-fraction-above-1", "shift-without-a-crop-in-a-config",
       "crop-plus-its-shift-margin-larger-than-the-images", "model-whose-module-does-not-exist",
       "model-too-big-for-memory", "unknown-precision", "unknown-precision-in-a-config", "statistics-interval-0",
       "statistics-interval-not-a-number", "view-of-a-missing-folder", "flush-interval-below-0",
       "export-tensorboard-of-a-missing-run", "stop-on-a-severity-that-does-not-exist")
def plain(case: Case) -> None:
    """The tiny MNIST as it is: the command alone is the bad input."""


@setup("missing-data-folder")
def in_a_real_process(case: Case) -> None:
    case.real_process = True  # one row proves the whole path: a real process, real stderr, real exit status


@setup("idx-file-missing")
def idx_file_missing(case: Case) -> None:
    (case.mnist / "t10k-labels-idx1-ubyte").unlink()


@setup("unreadable-idx-file")
def unreadable_idx(case: Case) -> None:
    case.unreadable(case.mnist / "train-labels-idx1-ubyte", (Path, "read_bytes"))


def _gzipped_labels(case: Case) -> bytearray:
    raw = case.mnist / "train-labels-idx1-ubyte"
    packed = bytearray(gzip.compress(raw.read_bytes(), mtime=0))
    raw.unlink()
    return packed


@setup("corrupt-gzip")
def corrupt_gzip(case: Case) -> None:
    packed = _gzipped_labels(case)
    packed[len(packed) // 2] ^= 0xFF  # inside the deflate stream: zlib (or the CRC check) refuses it
    (case.mnist / "train-labels-idx1-ubyte.gz").write_bytes(packed)


@setup("truncated-gzip")
def truncated_gzip(case: Case) -> None:
    packed = _gzipped_labels(case)
    (case.mnist / "train-labels-idx1-ubyte.gz").write_bytes(packed[: len(packed) // 2])


@setup("truncated-idx")
def truncated_idx(case: Case) -> None:
    path = case.mnist / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:10_000])


@setup("wrong-magic-number")
def wrong_magic(case: Case) -> None:
    path = case.mnist / "train-images-idx3-ubyte"
    path.write_bytes(b"GIF8" + path.read_bytes()[4:])


@setup("image-label-count-mismatch")
def count_mismatch(case: Case) -> None:
    path = case.mnist / "train-labels-idx1-ubyte"
    path.write_bytes(_idx_header(0x08, (1000,)) + path.read_bytes()[8 : 8 + 1000])


@setup("labels-out-of-range")
def labels_out_of_range(case: Case) -> None:
    path = case.mnist / "train-labels-idx1-ubyte"
    data = bytearray(path.read_bytes())
    data[8 + 3] = 12
    path.write_bytes(data)


@setup("images-and-labels-files-swapped")
def swapped(case: Case) -> None:
    shutil.copyfile(case.mnist / "train-labels-idx1-ubyte", case.mnist / "train-images-idx3-ubyte")


def _png(path: Path, size: tuple[int, int] = (8, 8)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size[::-1], 128, dtype=np.uint8), "L").save(path)


@setup("empty-image-folder")
def empty_image_folder(case: Case) -> None:
    (case.tmp / "imgs").mkdir()


@setup("single-class-image-folder")
def single_class(case: Case) -> None:
    _png(case.tmp / "imgs" / "cat" / "a.png")
    _png(case.tmp / "imgs" / "cat" / "b.png")


@setup("class-folder-with-non-image-files-only")
def non_images_only(case: Case) -> None:
    single_class(case)
    (case.tmp / "imgs" / "dog").mkdir()
    (case.tmp / "imgs" / "dog" / "notes.txt").write_text("not an image")
    (case.tmp / "imgs" / "dog" / "labels.csv").write_text("a,b\n")


@setup("corrupt-image-file")
def corrupt_image(case: Case) -> None:
    single_class(case)
    _png(case.tmp / "imgs" / "dog" / "a.png")
    (case.tmp / "imgs" / "dog" / "b.png").write_text("this is text, not a PNG")


@setup("unreadable-image-file")
def unreadable_image(case: Case) -> None:
    from PIL import Image

    single_class(case)
    _png(case.tmp / "imgs" / "dog" / "a.png")
    _png(case.tmp / "imgs" / "dog" / "b.png")
    case.unreadable(case.tmp / "imgs" / "dog" / "b.png", (Image, "open"))


@setup("images-of-mixed-sizes")
def mixed_sizes(case: Case) -> None:
    single_class(case)
    _png(case.tmp / "imgs" / "dog" / "a.png")
    _png(case.tmp / "imgs" / "dog" / "b.png", size=(10, 8))


# Users' model files for the --model rows, by row: file name (a module name no other row imports) and code.
_NET = "from torch import nn\n\n\ndef net(in_channels, n_classes):\n"
MODEL_FILES = {
    "model-whose-module-fails-to-import": ("models_broken", "import nosuchpackage\n"),
    "model-naming-an-attribute-the-module-lacks": ("models_noattr", "def net(in_channels, n_classes): ...\n"),
    "model-naming-something-not-callable": ("models_value", "net = 3\n"),
    "model-whose-factory-raises": ("models_raises", "def net(in_channels, n_classes):\n"
                                                    "    raise ValueError(f'no model for {in_channels} channels')\n"),
    "model-whose-factory-returns-no-module": ("models_list", _NET + "    return [nn.Linear(784, n_classes)]\n"),
    "model-with-the-wrong-output-shape": ("models_shape", _NET + "    return nn.Conv2d(in_channels, n_classes, 3)\n"),
}


def users_model_file(case: Case, key: str) -> None:
    """The row's model file in <tmp> (the current folder, which --model imports from), never cached."""
    module, code = MODEL_FILES[key]
    (case.tmp / f"{module}.py").write_text(code)
    case.monkeypatch.setattr(sys, "dont_write_bytecode", True)  # no __pycache__ beside the user's file
    case.monkeypatch.delitem(sys.modules, module, raising=False)


for _key in MODEL_FILES:
    setup(_key)(lambda case, key=_key: users_model_file(case, key))


@setup("pct-start-outside-0-1-in-a-fit")
def tiny_learner(case: Case) -> None:
    from convscope.data.batches import DeviceBatches
    from convscope.models import simple_cnn
    from convscope.train import Learner

    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    learn = Learner(simple_cnn(), DeviceBatches(x, y, 32, shuffle=True, drop_last=True), DeviceBatches(x, y, 64))
    weights = {k: v.clone() for k, v in learn.model.state_dict().items()}
    case.namespace["learn"] = learn

    def untouched(before: dict[str, str], after: dict[str, str]) -> None:
        assert before == after
        assert learn.train_iter == 0
        for name, value in learn.model.state_dict().items():
            assert torch.equal(value, weights[name]), name

    case.check = untouched


@setup("cuda-asked-for-none-there")
def no_cuda(case: Case) -> None:
    case.monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@setup("no-data-anywhere-and-offline")
def offline(case: Case) -> None:
    import dataclasses
    import socket

    from convscope.data import sources

    case.monkeypatch.delenv("CONVSCOPE_DATA")
    with socket.socket() as s:  # a port that was just free: nothing listens there, connecting is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = sources.DATASETS["mnist"]
    mirrors = tuple(f"http://127.0.0.1:{port}/{i}/" for i in range(len(spec.mirrors)))
    case.monkeypatch.setitem(sources.DATASETS, "mnist", dataclasses.replace(spec, mirrors=mirrors))

    def only_cache_folder_made(before: dict[str, str], after: dict[str, str]) -> None:
        assert after == {**before, "cache/": "dir", "cache/mnist/": "dir"}

    case.check = only_cache_folder_made


@setup("tensorboard-log-folder-that-is-a-file")
def tensorboard_file(case: Case) -> None:
    (case.tmp / "tb").write_text("not a folder")


@setup("run-folder-exists", "resume-with-a-mismatched-model", "export-tensorboard-without-a-log-folder")
def with_run(case: Case) -> None:
    case.copy_run()


def _failing(exc_errno: int, under: Path) -> Callable[..., None]:
    """A stand-in for os.replace: refuses any target below `under`, as a full or read-only disk would."""
    real_replace = os.replace

    def refuse(src: Any, dst: Any = None, *args: Any, **kwargs: Any) -> None:
        target = Path(dst if dst is not None else src)
        if target.is_relative_to(under):
            raise OSError(exc_errno, os.strerror(exc_errno))  # as a write() would: without a file name
        return real_replace(src, dst, *args, **kwargs)

    return refuse


@setup("read-only-output-folder")
def read_only_out(case: Case) -> None:
    (case.tmp / "ro").mkdir()
    real_mkdir = Path.mkdir

    def mkdir(self: Path, *args: Any, **kwargs: Any) -> None:
        if self.is_relative_to(case.tmp / "ro") and self != case.tmp / "ro":
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *args, **kwargs)

    case.monkeypatch.setattr(Path, "mkdir", mkdir)


@setup("disk-full-at-the-start")
def disk_full_at_start(case: Case) -> None:
    case.monkeypatch.setattr(os, "replace", _failing(errno.ENOSPC, case.tmp / "runs"))

    def only_out_folder_made(before: dict[str, str], after: dict[str, str]) -> None:
        assert after == {**before, "runs/": "dir"}  # the --out folder it made, empty: no run folder in it

    case.check = only_out_folder_made


@setup("read-only-run-folder-on-resume")
def read_only_run(case: Case) -> None:
    case.copy_run()
    case.monkeypatch.setattr(os, "replace", _failing(errno.EROFS, case.run))


@setup("disk-full-while-writing-a-checkpoint")
def disk_full_at_checkpoint(case: Case) -> None:
    from safetensors import SafetensorError

    import convscope.runs.checkpoint as checkpoint

    real_save, calls = checkpoint.save_file, []

    def save_file(tensors: Any, filename: str, *args: Any, **kwargs: Any) -> None:
        calls.append(filename)
        if len(calls) > 3:  # the first checkpoint's three files are written; the disk is full from then on
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        real_save(tensors, filename, *args, **kwargs)

    case.monkeypatch.setattr(checkpoint, "save_file", save_file)

    def step_one_kept(before: dict[str, str], after: dict[str, str]) -> None:
        from convscope import load_run
        from convscope.runs.checkpoint import load_checkpoint

        assert all(after.get(name) == digest for name, digest in before.items()), "a file that existed changed"
        ckpt = load_checkpoint(case.run)
        assert (ckpt.train_iter, ckpt.iter) == (1, 1)  # the step-1 checkpoint, whole
        assert not (case.run / ".checkpoint.tmp").exists(), "a half-written checkpoint was left behind"
        assert len(load_run(case.run).steps["loss"]) == 2  # the run's other files are whole and readable

    case.check = step_one_kept


@setup("resume-of-a-checkpoint-with-garbage-weights")
def garbage_weights(case: Case) -> None:
    case.copy_run()
    (case.run / "checkpoint" / "model.safetensors").write_bytes(np.random.default_rng(0).bytes(1000))


@setup("resume-of-a-truncated-state-json")
def truncated_state(case: Case) -> None:
    path = case.copy_run() / "checkpoint" / "state.json"
    path.write_bytes(path.read_bytes()[:100])


@setup("resume-of-a-state-json-with-wrong-content")
def wrong_state(case: Case) -> None:
    (case.copy_run() / "checkpoint" / "state.json").write_text('{"epoch": "one"}')


@setup("resume-of-a-state-json-with-a-damaged-loss-scaler")
def damaged_scaler(case: Case) -> None:
    path = case.copy_run() / "checkpoint" / "state.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "scaler": {"scale": "big"}}))


@setup("resume-of-a-run-whose-config-json-is-not-settings")
def config_not_settings(case: Case) -> None:
    (case.copy_run() / "config.json").write_text("[1, 2]")


@setup("diagnose-of-a-run-with-a-damaged-stats-npz", "resume-of-a-run-with-a-damaged-stats-npz")
def damaged_stats(case: Case) -> None:
    (case.copy_run() / "stats.npz").write_bytes(np.random.default_rng(0).bytes(1000))


@setup("diagnose-of-a-run-whose-stats-npz-has-a-damaged-ran-mask")
def damaged_ran_mask(case: Case) -> None:
    path = case.copy_run() / "stats.npz"
    with np.load(path) as saved:
        arrays = dict(saved)
    arrays["ran"] = np.ones((1, 1), dtype=bool)  # the per-row, per-layer mask of the wrong shape
    with path.open("wb") as f:
        np.savez(f, **arrays)


def _edit_json(path: Path, **changes: Any) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _rewrite_npz(path: Path, edit: Callable[[dict[str, np.ndarray]], None]) -> None:
    with np.load(path) as saved:
        arrays = dict(saved)
    edit(arrays)
    with path.open("wb") as f:
        np.savez(f, **arrays)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@setup("resume-of-a-state-json-whose-position-does-not-fit-the-run")
def position_off_schedule(case: Case) -> None:
    _edit_json(case.copy_run() / "checkpoint" / "state.json", iter=1000000, train_iter=1000000)


@setup("resume-of-a-state-json-whose-step-count-does-not-fit-its-position")
def step_count_off(case: Case) -> None:
    _edit_json(case.copy_run() / "checkpoint" / "state.json", train_iter=3)


def _with_good_report(case: Case) -> Path:
    """<run> with a report.html standing for the last good one, which a damaged input must not replace."""
    run = case.copy_run()
    (run / "report.html").write_text("<!DOCTYPE html><p>the last good report</p>")

    def only_partial_added(before: dict[str, str], after: dict[str, str]) -> None:
        partial = "runs/r/report.partial.html"
        assert {k: v for k, v in after.items() if k != partial} == before
        assert partial in after and "<!DOCTYPE html>" in (case.tmp / partial).read_text()

    case.check = only_partial_added
    return run


@setup("report-of-a-run-with-a-truncated-stats-npz")
def report_truncated_stats(case: Case) -> None:
    _truncate(_with_good_report(case) / "stats.npz")


@setup("report-of-a-run-whose-stats-npz-has-an-array-of-the-wrong-shape")
def report_stats_wrong_shape(case: Case) -> None:
    _rewrite_npz(_with_good_report(case) / "stats.npz",
                 lambda a: a.update(mean=np.zeros((1, 1), dtype=np.float32)))


@setup("report-of-a-run-whose-findings-json-is-not-a-list")
def report_findings_not_list(case: Case) -> None:
    (_with_good_report(case) / "findings.json").write_text('{"a": 1}')


@setup("report-of-a-run-whose-lr-find-json-is-not-valid-json")
def report_lr_find_not_json(case: Case) -> None:
    (_with_good_report(case) / "lr_find.json").write_text("{")


@setup("report-of-a-run-whose-lr-find-json-is-not-an-lr-finder-result")
def report_lr_find_not_result(case: Case) -> None:
    (_with_good_report(case) / "lr_find.json").write_text("[1, 2]")


@setup("report-of-a-run-with-a-damaged-steps-npz")
def report_damaged_steps(case: Case) -> None:
    run = case.copy_run()
    (run / "report.html").write_text("<!DOCTYPE html><p>the last good report</p>")
    (run / "steps.npz").write_bytes(np.random.default_rng(0).bytes(1000))


def _resumed_from_older(case: Case) -> None:
    """A warning row's run: resumed from checkpoint.1, it finishes with a whole newest checkpoint."""

    def finished(before: dict[str, str], after: dict[str, str]) -> None:
        from convscope import load_run
        from convscope.runs.checkpoint import load_checkpoint

        ckpt = load_checkpoint(case.run2)
        assert (ckpt.path.name, ckpt.train_iter, ckpt.epoch, ckpt.iter) == ("checkpoint", 4, 2, 0)
        assert load_run(case.run2).steps["step"].tolist() == [0, 1, 2, 3]
        assert "runs/r2/report.html" in after

    case.check = finished


@setup("resume-with-a-truncated-model-safetensors-in-the-newest-checkpoint")
def newest_weights_truncated(case: Case) -> None:
    _truncate(case.copy_run2() / "checkpoint" / "model.safetensors")
    _resumed_from_older(case)


@setup("resume-with-a-state-json-that-is-not-an-object-in-the-newest-checkpoint")
def newest_state_not_object(case: Case) -> None:
    (case.copy_run2() / "checkpoint" / "state.json").write_text("[]")
    _resumed_from_older(case)


@setup("resume-with-a-newest-checkpoint-that-loads-but-cannot-be-restored")
def newest_not_restorable(case: Case) -> None:
    _edit_json(case.copy_run2() / "checkpoint" / "state.json", optimizer={"param_groups": [], "other_state": {}})
    _resumed_from_older(case)


@setup("resume-with-both-checkpoints-truncated")
def both_truncated(case: Case) -> None:
    run = case.copy_run2()
    for folder in ("checkpoint", "checkpoint.1"):
        _truncate(run / folder / "model.safetensors")


@setup("resume-of-a-run-whose-config-json-holds-an-impossible-lr")
def config_lr_null(case: Case) -> None:
    _edit_json(case.copy_run() / "config.json", lr=None)


@setup("resume-of-a-run-whose-config-json-holds-checkpoint-every-0")
def config_checkpoint_every_0(case: Case) -> None:
    _edit_json(case.copy_run() / "config.json", checkpoint_every=0)


@setup("resume-of-a-run-whose-config-json-has-no-usable-global-batch-size")
def config_global_bs(case: Case) -> None:
    _edit_json(case.copy_run() / "config.json", data={"global_bs": "x"})


@setup("sigterm-while-the-report-is-written-after-the-last-step")
def sigterm_in_report(case: Case) -> None:
    import signal

    import convscope.report.html as html

    real_render = html.render_report

    def render_then_signal(*args: Any, **kwargs: Any) -> str:
        page = real_render(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # lands before the page is written: the write must not happen
        return page

    case.monkeypatch.setattr(html, "render_report", render_then_signal)

    def saved_without_report(before: dict[str, str], after: dict[str, str]) -> None:
        from convscope import load_run
        from convscope.runs.checkpoint import load_checkpoint

        assert "runs/r/report.html" not in after
        assert not [name for name in after if Path(name).name.startswith(".")], "a temporary file was left"
        assert load_checkpoint(case.run).train_iter == 2
        assert len(load_run(case.run).steps["loss"]) == 2

    case.check = saved_without_report


@setup("resume-of-a-run-with-a-damaged-steps-npz")
def resume_damaged_steps(case: Case) -> None:
    (case.copy_run() / "steps.npz").write_bytes(np.random.default_rng(0).bytes(1000))


@setup("resume-of-a-run-whose-steps-npz-has-no-step-numbers")
def resume_steps_without_step(case: Case) -> None:
    _rewrite_npz(case.copy_run() / "steps.npz", lambda a: a.pop("step"))


@setup("resume-of-a-run-whose-metrics-jsonl-has-a-row-without-an-epoch")
def resume_metrics_without_epoch(case: Case) -> None:
    (case.copy_run() / "metrics.jsonl").write_text('{"train_loss": 1.0}\n')


@setup("resume-of-a-checkpoint-with-nan-weights")
def nan_weights(case: Case) -> None:
    from safetensors.torch import load_file, save_file

    path = case.copy_run() / "checkpoint" / "model.safetensors"
    weights = load_file(str(path))
    weights["conv1.conv.weight"] = torch.full_like(weights["conv1.conv.weight"], float("nan"))
    save_file(weights, str(path))


@setup("diagnose-of-a-run-whose-steps-npz-arrays-differ-in-length")
def steps_lengths_differ(case: Case) -> None:
    _rewrite_npz(case.copy_run() / "steps.npz", lambda a: a.update(loss=a["loss"][:1]))


@setup("view-on-a-port-out-of-range", "compare-of-one-run")
def with_one_run(case: Case) -> None:
    case.copy_run()


@setup("compare-into-a-missing-folder")
def with_two_runs(case: Case) -> None:
    case.copy_run()
    case.copy_run2()


@setup("view-on-a-port-in-use")
def port_in_use(case: Case) -> None:
    import socket

    case.copy_run()
    listener = socket.socket()
    try:
        listener.bind(("127.0.0.1", 47613))
        listener.listen()
    except OSError:  # already taken by another program: in use all the same
        listener.close()
        return
    case.namespace["listener"] = listener  # kept open (listening) until the test's case is dropped


@setup("view-without-plotly")
def without_plotly(case: Case) -> None:
    case.copy_run()
    case.monkeypatch.setitem(sys.modules, "plotly", None)  # `import plotly` raises ImportError


@setup("compare-to-a-page-that-exists")
def compare_page_exists(case: Case) -> None:
    case.copy_run()
    case.copy_run2()
    (case.tmp / "compare.html").write_text("<!DOCTYPE html><p>an earlier comparison</p>")


@setup("report-of-an-lr-study-folder-written-before-lr-study-saved-its-runs")
def old_lr_study(case: Case) -> None:
    (case.tmp / "study").mkdir()
    (case.tmp / "study" / "lr_study.json").write_text("{}")


def _idx_header(code: int, dims: tuple[int, ...]) -> bytes:
    return bytes([0, 0, code, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)


# --- fixtures -------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_mnist(mnist_subset) -> Path:
    """A folder holding mnist/ with the first 1024 training and 256 test images of real MNIST (raw IDX)."""
    return mnist_subset(N_TRAIN, N_TEST)


@pytest.fixture(scope="session")
def tiny_run(tiny_mnist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real finished run: one epoch of 4 steps (limit_train=1024, bs=256), with stats and a checkpoint."""
    from convscope import TrainConfig, load_run
    from convscope.diagnose import diagnose, save_findings
    from convscope.experiments import run_training
    from convscope.stats import ActivationStats

    cfg = TrainConfig(data_root=str(tiny_mnist), limit_train=1024, bs=256, epochs=1, device="cpu",
                      out=str(tmp_path_factory.mktemp("tiny-run")), name="r")
    # stats=False + an ActivationStats callback: stats.npz is written, the slow HTML report is not.
    result = run_training(cfg, stats=False, cbs=[ActivationStats()])
    save_findings(result.run_dir, diagnose(load_run(result.run_dir)))
    return result.run_dir


@pytest.fixture(scope="session")
def tiny_run2(tiny_mnist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real finished run of two epochs of 2 steps (limit_train=512, bs=256), with its two checkpoints."""
    from convscope import TrainConfig
    from convscope.experiments import run_training
    from convscope.stats import ActivationStats

    cfg = TrainConfig(data_root=str(tiny_mnist), limit_train=512, bs=256, epochs=2, device="cpu",
                      out=str(tmp_path_factory.mktemp("tiny-run2")), name="r2")
    result = run_training(cfg, stats=False, cbs=[ActivationStats()])
    assert sorted(p.name for p in result.run_dir.glob("checkpoint*")) == ["checkpoint", "checkpoint.1"]
    return result.run_dir


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> content digest of every file and folder under `root`."""
    found = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        if path.is_dir():
            found[name + "/"] = "dir"
            continue
        try:
            found[name] = hashlib.sha256(path.read_bytes()).hexdigest()
        except PermissionError:  # a row's unreadable file, when not root: its size and time must hold
            stat = path.stat()
            found[name] = f"unreadable {stat.st_size} {stat.st_mtime_ns}"
    return found


# --- the test -------------------------------------------------------------------------------------------


def run_row(row: Row, case: Case) -> tuple[str, str, int | None]:
    """(stderr, stdout, exit code) of the row's command, or ("Type: message", "", None) of its Python call."""
    call = case.fill(row.call)
    if not call.startswith("convscope "):
        from convscope import TrainConfig
        from convscope.experiments import run_training

        namespace = {"TrainConfig": TrainConfig, "run_training": run_training, **case.namespace}
        with pytest.raises(ConvscopeError) as info:
            exec(call, namespace)
        return f"{type(info.value).__name__}: {info.value}", "", None
    argv = shlex.split(call)[1:]
    if case.real_process:
        proc = subprocess.run([sys.executable, "-m", "convscope", *argv], capture_output=True, text=True,
                              cwd=case.tmp, env=dict(os.environ), timeout=300)
        return proc.stderr, proc.stdout, proc.returncode
    result = CliRunner().invoke(app, argv)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a bug, not a handled bad input: show its traceback
    return result.stderr, result.stdout, result.exit_code


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_bad_input(row: Row, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_mnist: Path,
                   tiny_run: Path, tiny_run2: Path) -> None:
    case = Case(tmp_path, monkeypatch, tiny_run, tiny_run2)
    shutil.copytree(tiny_mnist, case.data)
    monkeypatch.setenv("CONVSCOPE_DATA", str(case.data))
    monkeypatch.setenv("CONVSCOPE_CACHE", str(tmp_path / "cache"))  # a download would show up as new files
    monkeypatch.chdir(tmp_path)  # a stray relative write would show up too
    SETUPS[row.key](case)
    before = snapshot(tmp_path)

    stderr, stdout, code = run_row(row, case)

    expected = case.fill(row.line)
    pattern = ".*?".join(re.escape(part) for part in expected.split("…"))
    printed = stderr.strip()
    assert re.fullmatch(pattern, printed), f"\nexpected: {expected}\nprinted:  {printed}"
    assert "\n" not in printed, "more than one line"
    assert code == row.exit_code
    assert "Traceback" not in stderr + stdout
    after = snapshot(tmp_path)
    if case.check is not None:
        case.check(before, after)
    else:
        assert after == before, "files were added, changed or removed"


def test_every_row_has_a_setup_and_every_setup_a_row() -> None:
    keys = [row.key for row in ROWS]
    assert len(keys) == len(set(keys)), "two rows share an input name"
    assert sorted(set(keys) - set(SETUPS)) == [], "rows without a setup"
    assert sorted(set(SETUPS) - set(keys)) == [], "setups without a row"
    assert [row.number for row in ROWS] == list(range(1, len(ROWS) + 1))
    assert len(ROWS) >= 25
