"""Issue 6's five CPU targets, checked for every recorded run of benchmark.py, one row each.

    python benchmarks/runs.py                          # every benchmarks/cpu*.json
    python benchmarks/runs.py benchmarks/cpu-icelake.json

Each JSON is what ``benchmark.py --json`` wrote: the run's arguments, its CPU and every worker's
measurements. The targets, all measured in the same run: sdlearn's guided step at >= 85% and its
512 px decode at >= 75% of the matmul rate around them; its time per image no slower than
KerasCV's and diffusers'; its peak memory no higher than KerasCV's. A run that measured only
some of these (a step-only run) is checked on those. A run that also measured sdlearn with CPU
fast paths that are not the default (``sdlearn-winograd``, ``sdlearn-folded``,
``sdlearn-folded-winograd``) has a row for each, which checks that configuration against the
same KerasCV and diffusers.
"""

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

from benchmark import achieved, matmul_span, task_flop

HERE = Path(__file__).resolve().parent
IMPLEMENTATIONS = ("sdlearn", "kerascv", "diffusers")
# Each one measured is checked in its own row.
SDLEARN_ROWS = ("sdlearn", "sdlearn-folded", "sdlearn-winograd", "sdlearn-folded-winograd")


def load(path):
    """(args, {(name, task): result}, CPU name) of one run's JSON."""
    try:
        run = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise SystemExit(f"{path}: not a readable JSON file ({error})") from None
    missing = [key for key in ("args", "cpu", "results") if key not in run]
    if missing:  # benchmark.py writes "results" after each worker, the rest when the run ends
        raise SystemExit(f"{path}: no {', '.join(missing)}: not the JSON of a finished "
                         "benchmark.py --json run (one cut short has only 'results')")
    results = {tuple(key.split(" ")): r for key, r in run["results"].items()}
    return SimpleNamespace(**run["args"]), results, run["cpu"]


def shares(args, results, task, key, flop_index):
    """{implementation: share of the matmul rate} of ``key`` in ``task`` (those measured)."""
    flop = task_flop(args)[flop_index]
    found = {name: achieved(flop, results.get((name, task), {}), key) for name in IMPLEMENTATIONS}
    return {name: rate_share[1] for name, rate_share in found.items() if rate_share}


def measured(results, task, key):
    """{implementation: results[(implementation, task)][key]} for those that measured it."""
    return {name: results[(name, task)][key] for name in IMPLEMENTATIONS
            if key in results.get((name, task), {})}


def targets(step, decode, image, rss):
    """{target: met} for the targets this run measured."""
    checks = {"step >= 85%": lambda: step["sdlearn"] >= 0.85,
              "decode >= 75%": lambda: decode["sdlearn"] >= 0.75,
              "image <= KerasCV": lambda: image["sdlearn"] <= image["kerascv"],
              "image <= diffusers": lambda: image["sdlearn"] <= image["diffusers"],
              "memory <= KerasCV": lambda: rss["sdlearn"] <= rss["kerascv"]}
    met = {}
    for name, check in checks.items():
        try:
            met[name] = check()
        except KeyError:  # not measured in this run
            pass
    return met


def cells(name, run, ours):
    """The row of ``table`` for one run (``load``'s triple, from the file ``name``), as its
    cells, with ``ours`` in sdlearn's place."""
    args, results, cpu = run
    results = {("sdlearn" if name == ours else name, task): r for (name, task), r in results.items()
               if name not in SDLEARN_ROWS or name == ours}
    step = shares(args, results, "step", "step_s", 0)
    decode = shares(args, results, "generate", "decode_s", 1)
    image = measured(results, "generate", "image_s")
    rss = measured(results, "generate", "peak_rss_gb")
    met = targets(step, decode, image, rss)

    def each(values, fmt):  # sdlearn / KerasCV / diffusers, "-" where not measured
        return " / ".join(fmt(values[name]) if name in values else "-" for name in IMPLEMENTATIONS)

    missed = [name for name, ok in met.items() if not ok]
    verdict = f"{sum(met.values())} of {len(met)}" + (f"; missed: {', '.join(missed)}"
                                                      if missed else "")
    sdlearn = [r for (name, _), r in results.items() if name == "sdlearn"]  # its shares' rate
    label = name + ("" if ours == "sdlearn" else f" ({ours})")
    return [label, cpu, matmul_span(sdlearn) or "-",
            each(image, lambda s: f"{s:.1f}"), each(step, lambda s: f"{100 * s:.1f}%"),
            each(decode, lambda s: f"{100 * s:.0f}%"), each(rss, lambda gb: f"{gb:.2f}"), verdict]


def all_cells(paths):
    """The cells of every row: one a run, and one more for each other sdlearn row it measured."""
    rows = []
    for path in paths:
        run = load(path)  # each file read once
        measured_names = {name for name, _ in run[1]}
        rows += [cells(Path(path).name, run, ours) for ours in SDLEARN_ROWS
                 if ours in measured_names]
    return rows


def table(paths):
    header = ["| run (JSON) | CPU | sdlearn's matmul GFLOP/s | s per 512 px image | guided 256 px "
              "step, % of matmul | decode 512 px, % of matmul | peak RSS GB | targets met |",
              "|---|---|---:|---:|---:|---:|---:|---|"]
    return header + ["| " + " | ".join(row) + " |" for row in all_cells(paths)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("json", nargs="*", help="runs' JSON files (default: benchmarks/cpu*.json)")
    paths = parser.parse_args().json or sorted(HERE.glob("cpu*.json"))
    rows = table(paths)
    print("Each cell: sdlearn / KerasCV / diffusers.\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
