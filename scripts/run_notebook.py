#!/usr/bin/env python3
"""Execute a notebook with nbclient and save it with its outputs (scripts/gpu_eval.py's
notebook jobs): ``run_notebook.py NOTEBOOK OUT.ipynb [--timeout S]``.  The environment sizes
it (``MESA_VIZ_LENGTH`` ...); a cell that raises stops the run, and the notebook is saved as
far as it ran, with the error in its cell."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("notebook")
    p.add_argument("out")
    p.add_argument("--timeout", type=int, default=3600, help="seconds a cell may take")
    args = p.parse_args(argv)
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    nb = nbformat.read(args.notebook, as_version=4)
    client = NotebookClient(nb, timeout=args.timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(Path(args.notebook).parent)}})
    t0, rc = time.monotonic(), 0
    try:
        client.execute()
    except CellExecutionError as e:
        print(f"run_notebook: {args.notebook}: a cell raised: {str(e)[:2000]}", file=sys.stderr)
        rc = 1
    nb.metadata["mesa_viz_run"] = {"seconds": round(time.monotonic() - t0, 1), "ok": rc == 0}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, args.out)
    return rc


if __name__ == "__main__":
    sys.exit(main())
