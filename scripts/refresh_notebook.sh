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
    .venv/bin/jupytext --sync "$notebook" --quiet
    echo "$notebook: executed in $(( $(date +%s) - start )) s"
done
