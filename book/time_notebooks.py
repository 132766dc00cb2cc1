"""Measure how long each chapter notebook takes to run top to bottom; the instructor's page shows it.

    .venv/bin/python book/time_notebooks.py                      # every notebooks/NN_*.ipynb
    .venv/bin/python book/time_notebooks.py notebooks/03_unet.ipynb

Each notebook runs exactly as ``scripts/refresh_notebook.sh`` runs it (``jupyter nbconvert
--execute``, same environment variables, a fresh kernel), but the executed copy goes to a
temporary folder: the notebook itself is not touched. The wall time, which includes starting
the kernel and importing TensorFlow, is what a learner waits for with "Run all". It goes into
book/notebook_times.json with the date, the machine and the hash of the notebook's .py source
(the page flags a time measured on an older version of the chapter), and the CPU time of the
run (nbconvert and its kernel, all threads), which does not grow when the machine is busy,
and the three slowest code cells (nbclient's per-cell timestamps), to show where the time goes.
"""

import datetime
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMES = ROOT / "book" / "notebook_times.json"
ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "TQDM_MININTERVAL": "1e9",
       "MPLBACKEND": "module://matplotlib_inline.backend_inline"}


def source_hash(notebook):
    source = notebook.with_suffix(".py")
    return hashlib.sha256(source.read_bytes()).hexdigest()[:16] if source.exists() else None


def machine():
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                  .splitlines() if line.startswith("model name")), platform.processor())
    return f"{model}, {os.cpu_count()} cores, {platform.system()}, Python {platform.python_version()}"


def slowest_cells(executed, count=3):
    """[[cell index, seconds, its first line], ...] of the ``count`` slowest code cells of an
    executed notebook, from the start/end timestamps nbclient records in each cell's metadata."""
    cells = json.loads(executed.read_text())["cells"]
    timed = []
    for index, cell in enumerate(cells):
        stamps = cell.get("metadata", {}).get("execution", {})
        if cell["cell_type"] == "code" and "iopub.execute_input" in stamps:
            start, end = (datetime.datetime.fromisoformat(stamps[k].replace("Z", "+00:00"))
                          for k in ("iopub.execute_input", "shell.execute_reply"))
            first_line = "".join(cell["source"]).strip().split("\n")[0][:80]
            timed.append([index, round((end - start).total_seconds(), 1), first_line])
    return sorted(timed, key=lambda row: -row[1])[:count]


def main(paths):
    notebooks = [Path(p).resolve() for p in paths] or sorted(
        (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    data = json.loads(TIMES.read_text()) if TIMES.exists() else {"notebooks": {}}
    data["command"] = "python book/time_notebooks.py"
    data["machine"] = machine()
    for notebook in notebooks:
        load = os.getloadavg()[0]
        with tempfile.TemporaryDirectory() as out:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            subprocess.run([str(ROOT / ".venv" / "bin" / "jupyter"), "nbconvert", "--to",
                            "notebook", "--execute", "--ExecutePreprocessor.timeout=1800",
                            "--ExecutePreprocessor.record_timing=True",
                            "--output-dir", out, str(notebook)],
                           check=True, env={**os.environ, **ENV}, capture_output=True)
            seconds = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            slowest = slowest_cells(Path(out) / notebook.name)
        # CPU time of nbconvert and its kernel (all threads): what the run costs whatever else
        # the machine is doing; the wall time grows when other programs share the cores.
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        data["notebooks"][notebook.stem] = {
            "seconds": round(seconds, 1),
            "cpu_seconds": round(cpu, 1),
            "date": datetime.date.today().isoformat(),
            "load_average_before": round(load, 2),
            "source_sha256": source_hash(notebook),
            "slowest_cells": slowest,
        }
        print(f"{notebook.name}: {seconds:.0f} s wall, {cpu:.0f} s CPU "
              f"(load average before: {load:.1f}); slowest cells: "
              + ", ".join(f"#{index} {cell_seconds:.0f} s" for index, cell_seconds, _ in slowest))
        TIMES.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
