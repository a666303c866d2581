"""README.md, run as written.

Each fenced block of the README is tagged with what it holds, and is run or compared here:

- ```python: the blocks run in order in one namespace (the second goes on from the first, as the README
  reads), in a fresh working folder;
- ```bash: one command a line (`\\` continues a line, `#` starts a comment, `&&` chains commands); each
  runs in a fresh working folder, except those in NOT_RUN, each with its reason;
- ```console: `$ command` lines, each followed by what it prints; the command runs and its output must
  match (`...` stands for lines left out, a run folder's time stamp for any time stamp).

From the command table, `convscope summary`, `diagnose RUN` and `report RUN` run too, with RUN the folder
that the set-up block's `convscope train` wrote (the only text put into a README command here, as RUN is
a placeholder), and the options shown in `[...]` given as shown.

Data: the set-up block's `convscope train` trains one epoch of all of real MNIST (CONVSCOPE_DATA points at
the test data): the one long run here. Everything else gets CONVSCOPE_DATA pointing at the first 4096
training and 1024 test images of the same files, written as IDX files: the README's own way of naming a
data folder, so the snippets run unchanged, in seconds. The slow tests run the Python blocks on all of
MNIST (and check the accuracy their comment gives) and the multi-process commands.

`convscope`, `python` and `torchrun` run as `sys.executable -m ...`, so that the package under test runs
rather than whatever `convscope` script is first on PATH.
"""

from __future__ import annotations

import ast
import gzip
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
TEXT = README.read_text()
PROGRAMS = {"convscope": [sys.executable, "-m", "convscope"], "python": [sys.executable],
            "torchrun": [sys.executable, "-m", "torch.distributed.run"]}
NOT_RUN = {  # command start -> why this test does not run it
    "pip install": "installs convscope and its dependencies, which the environment running this test has "
                   "(.ci/run runs this line)",
    "python -m pytest": "the test suite itself, this file included (.ci/run runs it)",
    "torchrun --nnodes 2": "needs two machines, and HOST stands for the first one's address",
}
SLOW = ("convscope train --nproc", "torchrun --nproc-per-node")  # start 2-4 processes: 20-35 s each here
TABLE_RUN = ("convscope summary [", "convscope diagnose RUN", "convscope report RUN")
TABLE_NOT_RUN = {  # command table row start -> where it is tested instead
    "convscope train [--dataset": "tests/test_cli.py",  # and its plain form is the set-up block's command
    "convscope train --resume": "tests/test_resume.py",
    "convscope train --nproc": "tests/dist/test_distributed.py",  # and the Multi-GPU block, here
    "convscope train --recipe": "tests/test_recipes.py",
    "convscope train --precision": "tests/train/test_precision.py",  # --compile: tests/train/test_compile.py
    "convscope train --model": "tests/models/test_factory.py",  # the memory check: tests/models/test_memory.py
    "convscope train [--crop": "tests/test_recipes.py",  # the fast recipe sets all three; bad values: test_bad_inputs
    "convscope lr-find": "tests/test_cli_lr_find.py",
    "convscope rerun": "tests/test_rerun.py",
    "convscope train --stop-on": "tests/diagnose/test_live.py",
    "convscope lr-study": "tests/test_lr_study.py",
    "convscope bs-sweep": "tests/test_bs_sweep.py",
    "convscope view": "tests/view/test_browser.py",  # serves until Ctrl-C: started and stopped there
    "convscope compare": "tests/view/test_browser.py",
    "convscope train --tensorboard": "tests/tensorboard/test_tensorboard.py",  # the option: test_bad_inputs
    "convscope export-tensorboard": "tests/tensorboard/test_tensorboard.py",
}
N_TRAIN, N_TEST = 4096, 1024
STAMP = r"\d{8}-\d{6}"  # the time stamp in a default run folder name


# --- reading the README ---------------------------------------------------------------------------------


def blocks(lang: str | None = None) -> list[tuple[str, str, int]]:
    """(tag, body, line number of the body's first line) of each fenced block, or of those tagged `lang`."""
    found = [(m[1], m[2], TEXT.count("\n", 0, m.start(2)) + 1)
             for m in re.finditer(r"^```(\S*)\n(.*?)^```$", TEXT, re.M | re.S)]
    return [b for b in found if lang is None or b[0] == lang]


def commands(body: str) -> list[list[str]]:
    """The commands of a bash block as argv lists: continued lines joined, comments dropped, `&&` split."""
    found = []
    for line in body.replace("\\\n", " ").splitlines():
        argv: list[str] = []
        for word in [*shlex.split(line, comments=True), "&&"]:
            if word != "&&":
                argv.append(word)
            elif argv:
                found.append(argv)
                argv = []
    return found


def sessions() -> list[tuple[str, list[str]]]:
    """(command, the lines it prints as shown) of every `$ ` line of the console blocks."""
    found: list[tuple[str, list[str]]] = []
    for _, body, _ in blocks("console"):
        for line in body.splitlines():
            if line.startswith("$ "):
                found.append((line[2:], []))
            else:
                found[-1][1].append(line)
    return found


def table_commands() -> list[str]:
    """The first cell's code span of each row of the command-line table, `\\|` read as `|`."""
    table = TEXT.split("## Command line", 1)[1].split("\n\n", 2)[1]
    return [re.match(r"\| `(.+?)` \|", row)[1].replace("\\|", "|") for row in table.splitlines()[2:]]


def run_folder_files() -> list[str]:
    """The names listed in the README's table of what a run folder holds."""
    table = TEXT.split("A run folder", 1)[1].split("## ", 1)[0]
    return re.findall(r"^\| `([^`]+)` \|", table, re.M)


def not_run_reason(argv: list[str]) -> str | None:
    line = shlex.join(argv)
    return next((why for start, why in NOT_RUN.items() if line.startswith(start)), None)


BASH = [argv for _, body, _ in blocks("bash") for argv in commands(body)]
TO_RUN = [pytest.param(argv, id=shlex.join(argv), marks=[pytest.mark.slow] if shlex.join(argv).startswith(SLOW)
                       else []) for argv in BASH if not_run_reason(argv) is None]


# --- running --------------------------------------------------------------------------------------------


def run(argv: list[str], cwd: Path, data: Path | None = None) -> subprocess.CompletedProcess:
    """Run a README command in `cwd` with `data` as CONVSCOPE_DATA; it must succeed without a traceback."""
    env = {**os.environ, "CONVSCOPE_CACHE": str(cwd / ".cache"),
           "MPLBACKEND": "Agg", "COLUMNS": "80"}  # a fixed width: output compared with the README's
    if data is not None:
        env["CONVSCOPE_DATA"] = str(data)
    proc = subprocess.run([*PROGRAMS[argv[0]], *argv[1:]], cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{shlex.join(argv)} exited with {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def written_run(proc: subprocess.CompletedProcess, cwd: Path) -> Path:
    """The run folder that a `convscope train` says it wrote, checked to hold what the README says."""
    found = re.search(r"^run written to (\S+)$", proc.stdout, re.M)
    assert found, proc.stdout
    run_dir = cwd / found[1]
    missing = [name for name in run_folder_files() if not (run_dir / name).exists()]
    assert missing == [], f"{run_dir} lacks {missing}"
    return run_dir


@pytest.fixture(scope="module")
def small_mnist(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder whose mnist/ holds the first N_TRAIN training and N_TEST test images of real MNIST."""
    root = tmp_path_factory.mktemp("small-mnist")
    (root / "mnist").mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        raw = gzip.decompress((data_dir / "mnist" / f"{name}.gz").read_bytes())
        ndim, n = raw[3], N_TRAIN if name.startswith("train") else N_TEST
        item = 1
        for i in range(1, ndim):  # bytes per image: the product of the dimensions after the count
            item *= int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big")
        header = raw[:4] + n.to_bytes(4, "big") + raw[8 : 4 + 4 * ndim]
        (root / "mnist" / name).write_bytes(header + raw[4 + 4 * ndim :][: n * item])
    return root


@pytest.fixture(scope="module")
def book_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folder of the set-up block's `convscope train`: one epoch of all of MNIST, the book's way."""
    assert ["convscope", "train"] in BASH, "the set-up block lost its `convscope train`"
    cwd = tmp_path_factory.mktemp("setup")
    return written_run(run(["convscope", "train"], cwd, data_dir), cwd)


# --- the tests ------------------------------------------------------------------------------------------


def test_every_block_says_what_it_holds() -> None:
    untagged = [f"README.md:{line - 1} ```{tag}" for tag, _, line in blocks() if tag not in
                ("python", "bash", "console")]
    assert untagged == [], "tag each block python, bash (commands) or console ($ lines and their output)"
    assert len(blocks("python")) == 2 and len(BASH) >= 5 and len(sessions()) == 2


def test_every_command_not_run_is_in_the_readme() -> None:
    lines = [shlex.join(argv) for argv in BASH]
    for start in NOT_RUN:
        assert any(line.startswith(start) for line in lines), f"NOT_RUN lists {start!r}, which the README lacks"


@pytest.mark.parametrize("argv", TO_RUN)
def test_bash_command(argv: list[str], request: pytest.FixtureRequest, tmp_path: Path, small_mnist: Path) -> None:
    if argv == ["convscope", "train"]:
        assert (request.getfixturevalue("book_run") / "stats.npz").is_file()
        return
    proc = run(argv, tmp_path, small_mnist)
    if "convscope" in argv and argv[argv.index("convscope") + 1] == "train":  # also under torchrun -m
        written_run(proc, tmp_path)


@pytest.mark.parametrize("session", sessions(), ids=[command for command, _ in sessions()])
def test_console_session(session: tuple[str, list[str]], tmp_path: Path, small_mnist: Path) -> None:
    command, shown = session
    printed = run(shlex.split(command), tmp_path, small_mnist).stdout
    # Each shown line must be printed (trailing blanks aside), in order; "..." matches any lines.
    parts = [r"(?:[^\n]*\n)*?" if line == "..." else re.escape(line.rstrip()).replace(
        re.escape("20261127-014500"), STAMP) + r"[ \t]*\n" for line in shown]
    assert re.fullmatch("".join(parts), printed), f"{command} printed:\n{printed}\nthe README shows:\n" + \
        "\n".join(shown)


def test_command_table_has_the_commands_run_here() -> None:
    rows = table_commands()
    for start in TABLE_RUN:
        assert any(row.startswith(start) for row in rows), start
    elsewhere = [row for row in rows if not row.startswith((*TABLE_RUN, *TABLE_NOT_RUN))]
    assert elsewhere == [], "a command of the table that is neither run here nor in TABLE_NOT_RUN"
    for path in TABLE_NOT_RUN.values():
        assert (README.parent / path).is_file(), path


@pytest.mark.parametrize("start", TABLE_RUN, ids=[start.split()[1] for start in TABLE_RUN])
def test_command_table(start: str, book_run: Path, tmp_path: Path) -> None:
    synopsis = next(row for row in table_commands() if row.startswith(start))
    argv = [str(book_run) if word == "RUN" else word for word in shlex.split(re.sub(r"[\[\]]", "", synopsis))]
    written = {"diagnose": "findings.json", "report": "report.html"}.get(argv[1])
    if written:
        (book_run / written).unlink()  # so that the file found afterwards is the one this command wrote
    proc = run(argv, tmp_path)
    if written:
        assert (book_run / written).stat().st_size > 0
    else:
        assert proc.stdout.startswith("Layer ") and "conv5.conv" in proc.stdout


def run_python_blocks(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                      capsys: pytest.CaptureFixture[str]) -> tuple[dict, dict]:
    """Run the README's Python blocks with `data` as CONVSCOPE_DATA; (their namespace, the epoch printed)."""
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.setenv("CONVSCOPE_DATA", str(data))
    monkeypatch.setenv("CONVSCOPE_CACHE", str(tmp_path / ".cache"))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    for _, body, line in blocks("python"):
        # Blank lines in front, so that a traceback names the README's own line numbers.
        exec(compile("\n" * (line - 1) + body, str(README), "exec"), namespace)
    import matplotlib.pyplot as plt

    plt.close("all")
    printed = capsys.readouterr().out
    epoch = ast.literal_eval(re.search(r"^\{'epoch': 0, .*\}$", printed, re.M)[0])
    assert set(epoch) == {"epoch", "train_loss", "valid_loss", "accuracy", "seconds"}, epoch
    result, run_ = namespace["result"], namespace["run"]
    assert result.run_dir.resolve().parent == tmp_path.resolve() / "runs" and run_.path == result.run_dir
    assert [m["epoch"] for m in run_.metrics] == [0, 1]  # 1.5 epochs: a whole one and half of the next
    return namespace, epoch


def test_python_blocks(small_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                       capsys: pytest.CaptureFixture[str]) -> None:
    namespace, _ = run_python_blocks(small_mnist, tmp_path, monkeypatch, capsys)
    assert len(namespace["data"].train_labels) == N_TRAIN  # the small folder was the one used


@pytest.mark.slow
def test_python_blocks_on_all_of_mnist(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    _, epoch = run_python_blocks(data_dir, tmp_path, monkeypatch, capsys)
    assert epoch["accuracy"] >= 0.98  # the README's comment: 'accuracy': 0.98..
