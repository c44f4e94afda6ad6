"""What every results file records about its run: the exact command, the date, the machine, the load.

Imported by the scripts in this folder (``python benchmarks/<script>.py`` puts this folder on ``sys.path``).
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def command(argv: list[str] | None = None) -> str:
    """The command line as typed from the repo root, with the thread variable that changes the numbers."""
    argv = list(sys.argv if argv is None else argv)
    script = os.path.relpath(Path(argv[0]).resolve(), REPO) if argv else ""
    return (f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} python "
            + " ".join(shlex.quote(a) for a in [script, *argv[1:]]))


def provenance(argv: list[str] | None = None) -> dict[str, Any]:
    """``command``, ``date`` (UTC), ``machine`` (one line), ``machine_info`` (the details) and ``loadavg``."""
    from apd_edge.bench.machine import describe, machine_info

    info = machine_info()
    return {"command": command(argv), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": describe(info), "machine_info": info, "loadavg": list(os.getloadavg())}
