#!/usr/bin/env bash
# Re-execute notebooks from their .py source and write the outputs into the paired .ipynb.
# Usage: bash scripts/refresh_notebook.sh notebooks/03_unet.py [more.py ...]
set -euo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=2 TQDM_MININTERVAL=1e9 MPLBACKEND=module://matplotlib_inline.backend_inline
for source in "$@"; do
    notebook="${source%.py}.ipynb"
    .venv/bin/jupytext --to ipynb --update --output "$notebook" "$source" --quiet
    start=$(date +%s)
    .venv/bin/jupyter nbconvert --to notebook --execute --inplace \
        --ExecutePreprocessor.timeout=600 --ExecutePreprocessor.record_timing=False \
        --ClearMetadataPreprocessor.enabled=True \
        --ClearMetadataPreprocessor.preserve_cell_metadata_mask='[("tags")]' "$notebook"
    # TensorFlow's C++ log lines (such as where it turns on oneDNN, on CPUs with AVX-512) reach
    # the kernel's stderr whatever TF_CPP_MIN_LOG_LEVEL says, and not on every run: they are not
    # the chapter's output, and nbval would compare them.
    .venv/bin/python - "$notebook" <<'PY'
import re, sys, nbformat
TF_LOG = re.compile(r"WARNING: All log messages before absl::InitializeLog\(\) is called are "
                    r"written to STDERR|[IWEF]\d{4} \d\d:\d\d:[\d.]+ +\d+ [\w.]+:\d+\] ")
notebook = nbformat.read(sys.argv[1], as_version=4)
for cell in notebook.cells:
    for output in cell.get("outputs", []):
        if output.get("name") == "stderr":
            output.text = "".join(line for line in output.text.splitlines(keepends=True)
                                  if not TF_LOG.match(line))
    if "outputs" in cell:
        cell.outputs = [o for o in cell.outputs if o.get("name") != "stderr" or o.text]
nbformat.write(notebook, sys.argv[1])
PY
    .venv/bin/jupytext --sync "$notebook" --quiet
    echo "$notebook: executed in $(( $(date +%s) - start )) s"
done
