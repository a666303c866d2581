"""The `convscope` command line: one file per command, each a plain typed function whose docstring is
the help. The commands parse and print; the work is in `convscope.experiments` (and `report`,
`diagnose` for saved runs). Each imports torch only when it runs, so `convscope --help` stays fast.

Errors caused by input (ConvscopeError, a refused write) print one line on stderr and exit with code 2,
with no traceback (`app.user_errors`); anything else is a bug and shows its traceback.
"""

from __future__ import annotations

from convscope.cli.app import app, user_errors
from convscope.cli.bs_sweep import bs_sweep_command
from convscope.cli.compare import compare_command
from convscope.cli.diagnose import diagnose_command
from convscope.cli.export_tensorboard import export_tensorboard_command
from convscope.cli.lr_find import lr_find_command
from convscope.cli.lr_study import lr_study_command
from convscope.cli.report import report_command
from convscope.cli.rerun import rerun_command
from convscope.cli.summary import summary_command
from convscope.cli.train import train_command
from convscope.cli.view import view_command

COMMANDS = {  # in the order `convscope --help` lists them
    "train": train_command,
    "summary": summary_command,
    "diagnose": diagnose_command,
    "report": report_command,
    "view": view_command,
    "compare": compare_command,
    "rerun": rerun_command,
    "lr-find": lr_find_command,
    "lr-study": lr_study_command,
    "bs-sweep": bs_sweep_command,
    "export-tensorboard": export_tensorboard_command,
}

for _name, _command in COMMANDS.items():
    app.command(_name)(user_errors(_command))


def main() -> None:
    app()


__all__ = ["COMMANDS", "app", "main"]
