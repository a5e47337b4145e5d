"""The prepared GPU check: correctness and speed of evo-pai on one CUDA GPU, in one command.

    python benchmarks/gpu_check.py --out DIR [--smoke] [--budget-s 450] [--sections a,b]

Writes DIR/gpu_report.md and DIR/gpu_report.json, rewritten after every section (a run stopped
midway still leaves what it measured). Sections, in order:
  environment  card, torch/CUDA versions, datasheet peaks, measured 8192^3 matmul TFLOP/s per dtype
  agreement    one float64 burst (LeNet-300-100, Conv-4, ResNet-20) on CPU and on CUDA from the same θ0, mask
               and seed: max |Δ| of metrics, weights (BatchNorm statistics too) and traits (target: metrics
               <= 1e-9); ResNet-20 also vectorized vs sequential on CUDA (BatchNorm over K*C channels)
  throughput   local vs vectorized on CUDA, LeNet-300-100 K = 1, 8, 32, 128, 512, Conv-4 and ResNet-20 K = 8, 32
               (or up to the largest that fits): model-epochs/s, speed-up over sequential, peak
               memory, achieved TFLOP/s against the card's peak; Conv-4 grouped vs per-model
               convolutions and LeNet with evaluation.compile on vs off
  runs         configs/quickstart.yaml and configs/combined_fmnist.yaml (local and vectorized) on cuda
  precision    one search per train.precision (fp32, tf32, bf16): time and test accuracy
  ray          one generation: Ray with 4 actors x 0.25 GPU against local vectorized
Sections run while the time budget lasts (default 450 s, sized for the whole check to stay under
8 minutes; a section that starts runs to its end);
a skipped or failed section says so in the report, and the exit code is 1 if any failed.
`--smoke` runs every section at tiny sizes on CPU in seconds (what the test suite runs): it keeps
the script working and proves nothing about GPUs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))  # evo_pai from this checkout, installed or not (the device machine: not)
# Ray's worker processes import evo_pai too; they inherit the environment, not sys.path
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT), os.environ.get("PYTHONPATH")] if p)

import torch  # noqa: E402

from _gpu_sections import FMNIST_DIR, SECTIONS, Check  # noqa: E402
from evo_pai.runs.components import load_components  # noqa: E402


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return "–" if v is None else str(v)


def table(rows: list[dict], keys: list[str]) -> list[str]:
    keys = [k for k in keys if any(k in r for r in rows)]
    out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    return out + ["| " + " | ".join(fmt(r.get(k)) for k in keys) + " |" for r in rows]


def render_result(name: str, res: dict) -> list[str]:
    if name == "throughput":
        keys = ["model", "K", "status", "n_train", "vectorized_s", "model_epochs_per_s", "sequential_model_epochs_per_s",
                "speedup", "peak_memory_gib", "achieved_tflops", "of_datasheet_fp32", "of_measured_fp32_matmul"]
        lines = table(res["rows"], keys) + ["", f"FLOPs: {res['flops_note']}.", ""]
        return lines + table(res["variants"], ["model", "K", "status", "variant", "grouped_s", "per_model_s",
                                               "grouped_speedup", "eager_s", "compiled_s", "compile_speedup",
                                               "first_compiled_burst_s"])
    if name == "agreement":
        rows = [{"model": m, **{k: v for k, v in r.items() if k != "per_metric"}} for m, r in res["models"].items()]
        return [f"{res['compared']}; target max |Δ metric| <= {res['target_metrics_max_abs']:g}: "
                f"**{'met' if res['met'] else 'MISSED'}**", ""] + table(rows, list(rows[0]))
    lines = []
    for k, v in res.items():
        if isinstance(v, dict) and v and all(not isinstance(x, dict) for x in v.values()):
            lines.append(f"- **{k}**: " + ", ".join(f"{kk} {fmt(vv)}" for kk, vv in v.items()))
        else:
            lines.append(f"- **{k}**: {fmt(v) if not isinstance(v, dict) else json.dumps(v)}")
    return lines


def write(out: Path, meta: dict, sections: dict) -> None:
    (out / "gpu_report.json").write_text(json.dumps({"meta": meta, "sections": sections}, indent=2, default=str))
    lines = [f"# evo-pai GPU check{' (--smoke: tiny sizes, not a GPU measurement)' if meta['smoke'] else ''}", "",
             f"- command: `{meta['command']}`", f"- date: {meta['date']}", f"- machine: {meta['machine']}",
             f"- device: {meta['device']}", f"- Fashion-MNIST: {meta['fashion_mnist']}", f"- budget: {meta['budget_s']:g} s, used {meta.get('elapsed_s', 0):.0f} s", ""]
    for name, sec in sections.items():
        lines += [f"## {name} — {sec['status']} ({sec.get('seconds', 0):.1f} s)", ""]
        if sec["status"] == "ok":
            lines += render_result(name, sec["result"])
        elif "error" in sec:
            lines += ["```", sec["error"], "```"]
        lines.append("")
    (out / "gpu_report.md").write_text("\n".join(lines))


def _describe_fmnist(root: Path | None) -> str:
    """Which Fashion-MNIST the numbers are on: a carried subset reads fewer images than the full set."""
    if root is None:
        return "not available: digits (8x8) instead, combined_fmnist skipped"
    note = root / "SUBSET.txt"
    return f"{root}" + (f" ({note.read_text().strip()})" if note.is_file() else " (full)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path, help="folder for gpu_report.md and gpu_report.json")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on CPU (or the GPU if there is one), seconds")
    p.add_argument("--budget-s", type=float, default=None, help="time budget in seconds (default 450; smoke 600)")
    p.add_argument("--sections", default=None, help=f"comma-separated subset of {', '.join(n for n, _, _ in SECTIONS)}")
    p.add_argument("--device", default=None, help="default: cuda, or cpu with --smoke when there is no GPU")
    p.add_argument("--fmnist-root", type=Path, default=None,
                   help=f"Fashion-MNIST IDX files (default {FMNIST_DIR} if present, else digits is used)")
    args = p.parse_args()
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA GPU here (use --smoke on CPU)")
    if args.device == "cpu" and not args.smoke:
        p.error("no CUDA GPU: the full check measures a GPU; run with --smoke to exercise it on CPU")
    names = [n for n, _, _ in SECTIONS]
    wanted = args.sections.split(",") if args.sections else names
    if unknown := [w for w in wanted if w not in names]:
        p.error(f"--sections: unknown {', '.join(unknown)}; choose from {', '.join(names)}")
    budget = args.budget_s if args.budget_s is not None else (600.0 if args.smoke else 450.0)
    args.out.mkdir(parents=True, exist_ok=True)
    load_components()
    t0 = time.perf_counter()
    fmnist = args.fmnist_root or (FMNIST_DIR if FMNIST_DIR.is_dir() else None)
    if fmnist is not None and not fmnist.is_dir():
        p.error(f"--fmnist-root: {fmnist} is not a folder (scripts/gpu_carry.sh writes .gpu_data/fashion-mnist)")
    check = Check(smoke=args.smoke, device=args.device, deadline=t0 + budget,
                  fmnist=fmnist.resolve() if fmnist else None)
    meta = {"command": " ".join(["python"] + sys.argv), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {platform.python_version()}, torch {torch.__version__}",
            "device": torch.cuda.get_device_name() if check.cuda else "cpu", "smoke": args.smoke, "budget_s": budget,
            "fashion_mnist": _describe_fmnist(check.fmnist)}
    failed = False
    for name, fn, needs in SECTIONS:
        if name not in wanted:
            continue
        if check.left() < needs and not args.smoke:
            check.results[name] = {"status": f"skipped: time budget ({check.left():.0f} s left, needs ~{needs} s)"}
        else:
            s0 = time.perf_counter()
            print(f"gpu_check: {name} ...", flush=True)
            try:
                check.results[name] = {"status": "ok", "result": fn(check)}
            except Exception:  # one section's failure must not hide the others' numbers
                failed = True
                check.results[name] = {"status": "FAILED", "error": traceback.format_exc()[-3000:]}
            check.results[name]["seconds"] = time.perf_counter() - s0
            print(f"gpu_check: {name} {check.results[name]['status']} ({check.results[name]['seconds']:.1f} s)", flush=True)
        meta["elapsed_s"] = time.perf_counter() - t0
        write(args.out, meta, check.results)
    print(f"gpu_check: wrote {args.out / 'gpu_report.md'} and {args.out / 'gpu_report.json'} "
          f"in {time.perf_counter() - t0:.0f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
