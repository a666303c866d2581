"""`convscope train --nproc N`: start the same command under torchrun with N processes.

torchrun (torch.distributed.run) is PyTorch's own launcher: it sets each process's RANK, WORLD_SIZE and
LOCAL_RANK, and when one process fails it stops the others. This module only rebuilds the command line.
"""

from __future__ import annotations

import logging
import os
import sys

from convscope.config import check_whole_number
from convscope.errors import ConfigError
from convscope.dist.context import launched_by_torchrun


def _without_option(argv: list[str], option: str) -> list[str]:
    """`argv` minus `option VALUE` / `option=VALUE`."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            out.append(arg)
    return out


def launch(nproc: int, argv: list[str]) -> int:
    """Run `python -m convscope <argv without --nproc>` as `nproc` torchrun processes; their exit code.

    When a process fails, torchrun stops the others; its own report of that is a long traceback, so it
    is replaced by one line naming the process that failed first (that process printed its own error).
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    check_whole_number("--nproc", nproc)
    if launched_by_torchrun():
        raise ConfigError("--nproc starts torchrun itself; inside torchrun leave it out")
    # Share the cores out (torchrun would set 1 thread per process and warn); its agent's log lines about
    # stopping processes are replaced by the one line below.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    for name in [n for n in logging.root.manager.loggerDict if n.startswith("torch.distributed")]:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    args = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={nproc}", "--module", "convscope",
                                         *_without_option(argv, "--nproc")])
    try:
        run(args)
    except SignalException as exc:  # Ctrl-C / SIGTERM: torchrun passed it on; process 0 printed how to resume
        return 128 + int(exc.sigval)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        code = failure.exitcode
        print(f"error: process {rank} of {nproc} exited with code {code}; the others were stopped "
              "(its message is above)", file=sys.stderr)
        return code if 0 < code < 256 else 1
    return 0
