"""The measurements of benchmarks/gpu_check.py, one function per section. Each takes the `Check`
(device, sizes, time left) and returns a dict of plain numbers and strings for the JSON file and the
report. Nothing here estimates a number: every value is measured in this run, or absent."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from evo_pai.core.config import build_config, load_config
from evo_pai.data.datasets import load_data
from evo_pai.evaluation.base import WorkerContext, make_evaluator
from evo_pai.evaluation.local import LocalEvaluator
from evo_pai.evaluation.vectorized import BatchedTrainer, VectorizedEvaluator
from evo_pai.models.networks import count_flops
from evo_pai.runs.api import run
from evo_pai.search.experiment import Experiment
from evo_pai.training.compiled import CompiledForward, compiled_update
from evo_pai.training.precision import numerics
from evo_pai.training.stacked import StackedForward
from evo_pai.training.tasks import BurstTask

ROOT = Path(__file__).resolve().parents[1]
FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
# Datasheet peaks, dense (no structured sparsity), boost clock, TFLOP/s: leads to compare against,
# not readings. fp64 is the tensor-core matmul rate where the card has one. Matched by substring of
# torch.cuda.get_device_name(), first match wins.
PEAK_TFLOPS = [
    ("H100 PCIe", {"fp64": 51.0, "fp32": 51.0, "tf32": 378.0, "bf16": 756.0}),
    ("H200", {"fp64": 67.0, "fp32": 67.0, "tf32": 495.0, "bf16": 989.0}),
    ("H100", {"fp64": 67.0, "fp32": 67.0, "tf32": 495.0, "bf16": 989.0}),
    ("A100", {"fp64": 19.5, "fp32": 19.5, "tf32": 156.0, "bf16": 312.0}),
    ("L4", {"fp64": 0.49, "fp32": 30.3, "tf32": 60.0, "bf16": 121.0}),
    ("A10", {"fp64": 0.98, "fp32": 31.2, "tf32": 62.5, "bf16": 125.0}),
    ("V100", {"fp64": 7.8, "fp32": 15.7}),
    ("T4", {"fp64": 0.25, "fp32": 8.1}),
]


@dataclass
class Check:
    smoke: bool
    device: str  # "cuda" for the real check; "cpu" in --smoke without a GPU
    deadline: float  # time.perf_counter() value after which sections are skipped
    fmnist: Path | None = None  # Fashion-MNIST IDX folder; None: not available (digits instead)
    results: dict = field(default_factory=dict)

    def fmnist_set(self) -> list[str]:
        """--set overrides pointing the Fashion-MNIST configs at this check's copy of the data."""
        return [f"data.root={self.fmnist}"] if self.fmnist else []

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


def peak_for(name: str) -> dict:
    return next((dict(p) for key, p in PEAK_TFLOPS if key in name), {})


# -- environment and the card's measured matmul rate ------------------------------------------------
def environment(c: Check) -> dict:
    name = torch.cuda.get_device_name() if c.cuda else "cpu"
    out = {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if c.cuda else None, "torch_threads": torch.get_num_threads(),
           "peak_tflops_datasheet": peak_for(name)}
    if c.cuda:
        out["memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    n = 256 if c.smoke else 8192
    measured = {}
    for label, dtype, precision in [("fp32", torch.float32, "fp32"), ("tf32", torch.float32, "tf32"),
                                    ("bf16", torch.bfloat16, "fp32"), ("fp64", torch.float64, "fp32")]:
        a = torch.randn(n, n, device=c.device, dtype=dtype)
        b = torch.randn(n, n, device=c.device, dtype=dtype)
        with numerics(precision):
            a @ b
            c.sync()
            reps = 3 if c.smoke else 10
            t = time.perf_counter()
            for _ in range(reps):
                a @ b
            c.sync()
        measured[label] = 2 * n**3 * reps / (time.perf_counter() - t) / 1e12
        del a, b
    out["matmul_tflops_measured"] = measured
    out["matmul_size"] = n
    return out


# -- CPU vs CUDA, float64, one burst ----------------------------------------------------------------
def _data_raw(c: Check, train: int, small_eval: bool = False) -> dict:
    """Fashion-MNIST subsets (digits in --smoke); small_eval: 1,200 validation / 500 test examples."""
    if c.smoke or c.fmnist is None:
        return {"name": "digits", "train_subset": min(train, 512)}
    return {"name": "fashion_mnist", "root": str(c.fmnist), "train_subset": train, "test_subset": 500 if small_eval else 2000,
            "val_fraction": 0.02 if small_eval else 0.1}


def agreement(c: Check) -> dict:
    other = c.device if c.cuda else "cpu"
    out = {"compared": f"cpu vs {other}" + ("" if c.cuda else " (no CUDA here: the code path only)"), "models": {}}
    for model, train in [("mlp", 256 if c.smoke else 4096), ("conv4", 64 if c.smoke else 256),
                         ("resnet20", 32 if c.smoke else 256)]:  # BatchNorm: running statistics in the state
        raw = {"seed": 0, "data": _data_raw(c, train, small_eval=True), "model": {"name": model},
               "train": {"dtype": "float64", "batch_size": 64}, "evaluation": {"device": "cpu"}}
        cfg = build_config(raw)
        data = load_data(cfg.data)
        cpu = WorkerContext(cfg, "cpu", data)
        dev = WorkerContext(build_config({**raw, "evaluation": {"device": other}}), other, data)
        exp = Experiment(cfg, LocalEvaluator(cfg, data), data)
        task = BurstTask(exp.random_mask(0.5, 0), 1.0, 12345, keep_state=True, test=True)
        a, b = cpu.run(task), dev.run(task)
        out["models"][model] = {
            "metrics_max_abs": max(abs(a.metrics[k] - b.metrics[k]) for k in a.metrics),
            "per_metric": {k: abs(a.metrics[k] - b.metrics[k]) for k in a.metrics},
            "weights_max_abs": max(float((a.state[k] - b.state[k]).abs().max()) for k in a.state),
            "traits_max_abs_float32": max(float((a.traits[t][k] - b.traits[t][k]).abs().max())
                                          for t in a.traits for k in a.traits[t]),
            "n_train": data.n_train}
        if model == "resnet20":  # BatchNorm batched over K*C channels on the device vs one model at a time there
            tasks = [task, BurstTask(exp.random_mask(0.7, 1), 1.0, 54321, keep_state=True)]
            seq, vec = [dev.run(t) for t in tasks], BatchedTrainer(dev).run(tasks)
            out["models"][model]["vectorized_vs_sequential_metrics_max_abs"] = max(
                abs(x.metrics[k] - y.metrics[k]) for x, y in zip(seq, vec) for k in y.metrics)
            out["models"][model]["vectorized_vs_sequential_state_max_abs"] = max(
                float((x.state[k].double() - y.state[k].double()).abs().max()) for x, y in zip(seq, vec) for k in x.state)
    out["target_metrics_max_abs"] = 1e-9
    out["met"] = all(m["metrics_max_abs"] <= 1e-9 and m.get("vectorized_vs_sequential_metrics_max_abs", 0) <= 1e-9
                     for m in out["models"].values())
    return out


# -- local vs vectorized throughput -----------------------------------------------------------------
def _throughput_plan(c: Check) -> list[tuple[str, int, list[int]]]:
    if c.smoke:
        return [("mlp", 256, [1, 2]), ("conv4", 64, [2]), ("resnet20", 32, [2])]
    return [("mlp", 16384, [1, 8, 32, 128, 512]), ("conv4", 2048, [8, 32]), ("resnet20", 2048, [8, 32])]


def _timed(c: Check, fn, repeats: int) -> float:
    best = float("inf")
    for r in range(repeats):
        c.sync()
        t = time.perf_counter()
        fn(r)
        c.sync()
        best = min(best, time.perf_counter() - t)
    return best


def throughput(c: Check) -> dict:
    rows, extras, peak = [], [], peak_for(c.results.get("environment", {}).get("result", {}).get("device", ""))
    measured = c.results.get("environment", {}).get("result", {}).get("matmul_tflops_measured", {})
    repeats = 1 if c.smoke else 2
    for model, train, ks in _throughput_plan(c):
        raw = {"seed": 0, "data": _data_raw(c, train), "model": {"name": model}, "evaluation": {"device": c.device}}
        cfg = build_config(raw)
        data = load_data(cfg.data)
        local = LocalEvaluator(cfg, data)
        vec = VectorizedEvaluator(build_config({**raw, "evaluation": {"device": c.device, "backend": "vectorized",
                                                                      "max_memory_gb": 1e4}}), data)
        exp = Experiment(cfg, local, data)
        masks = [exp.random_mask(0.5, i) for i in range(max(ks))]
        fwd = count_flops(exp.model, data.input_shape)["dense"]
        flops_per_model_epoch = 3 * fwd * data.n_train + fwd * len(data.val_y)  # train + validation forward

        def tasks(k: int, r: int) -> list[BurstTask]:  # fresh seeds every call: no cache hits
            return [BurstTask(masks[i], 1.0, 10_000_000 + 100_000 * k + 1000 * (r + 2) + i) for i in range(k)]

        n_seq = min(max(ks), 2 if c.smoke else 8)
        local.evaluate(tasks(n_seq, -2))  # warm-up: CUDA context, cuBLAS handles, allocator
        seq_s = _timed(c, lambda r: local.evaluate(tasks(n_seq, r)), repeats) / n_seq
        for k in ks:
            if c.left() < 20 and not c.smoke:
                rows.append({"model": model, "K": k, "status": "skipped: time budget"})
                continue
            vec.trainer.chunk = k  # one batched pass of K models
            try:
                if c.cuda:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                vec.evaluate(tasks(k, -1))  # warm-up
                vec_s = _timed(c, lambda r: vec.evaluate(tasks(k, r)), repeats)
            except torch.cuda.OutOfMemoryError:
                rows.append({"model": model, "K": k, "status": "out of memory"})
                break
            tflops = k * flops_per_model_epoch / vec_s / 1e12
            rows.append({"model": model, "K": k, "status": "ok", "n_train": data.n_train, "vectorized_s": vec_s,
                         "model_epochs_per_s": k / vec_s, "sequential_model_epochs_per_s": 1 / seq_s,
                         "speedup": seq_s * k / vec_s,
                         "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if c.cuda else None,
                         "achieved_tflops": tflops,
                         "of_datasheet_fp32": tflops / peak["fp32"] if "fp32" in peak else None,
                         "of_measured_fp32_matmul": tflops / measured["fp32"] if measured.get("fp32") else None})
        extras += _variants(c, model, vec, tasks, ks, repeats)
    return {"rows": rows, "variants": extras, "flops_note": "3 x dense forward FLOPs x training examples + "
            "validation forward, per model-epoch (masks save no FLOPs on dense kernels)"}


def _variants(c: Check, model: str, vec, tasks, ks, repeats) -> list[dict]:
    """Conv-4: grouped vs per-model convolutions; LeNet: evaluation.compile off vs on. Same K, same tasks."""
    k = max(ks) if c.smoke else (32 if model == "conv4" else 128)
    if c.left() < 60 and not c.smoke:
        return [{"model": model, "K": k, "status": "skipped: time budget"}]
    base = vec.trainer.forward, vec.trainer.update
    vec.trainer.chunk = k
    out = []
    try:
        eager_s = _timed(c, lambda r: vec.evaluate(tasks(k, 10 + r)), repeats)
        if model == "conv4":
            vec.trainer.forward = StackedForward(vec.context.model, model, conv_mode="per_model")
            vec.evaluate(tasks(k, 19))
            other_s = _timed(c, lambda r: vec.evaluate(tasks(k, 20 + r)), repeats)
            out.append({"model": model, "K": k, "status": "ok", "variant": "convolutions per model vs grouped",
                        "grouped_s": eager_s, "per_model_s": other_s, "grouped_speedup": other_s / eager_s})
        elif c.smoke:  # compiling takes ~30 s on 2 CPU cores; tests/test_vectorized.py covers it on CPU
            out.append({"model": model, "K": k, "status": "skipped in --smoke", "variant": "evaluation.compile on vs off"})
        else:
            vec.trainer.forward, vec.trainer.update = CompiledForward(base[0]), compiled_update()
            t = time.perf_counter()
            vec.evaluate(tasks(k, 29))
            first = time.perf_counter() - t
            other_s = _timed(c, lambda r: vec.evaluate(tasks(k, 30 + r)), repeats)
            out.append({"model": model, "K": k, "status": "ok", "variant": "evaluation.compile on vs off",
                        "eager_s": eager_s, "compiled_s": other_s, "compile_speedup": eager_s / other_s,
                        "first_compiled_burst_s": first})
    finally:
        vec.trainer.forward, vec.trainer.update = base
    return out


# -- whole runs -------------------------------------------------------------------------------------
SUMMARY_KEYS = ["test_accuracy", "sparsity", "search_seconds", "final_seconds", "wall_seconds", "search_model_epochs",
                "backend", "device", "cache_hits"]
SMOKE_RUN = ["search.population=2", "search.generations=2", "search.burst_epochs=1", "final.epochs=1"]
SMOKE_FMNIST = ["data.train_subset=512", "data.test_subset=200", "data.val_fraction=0.02", "search.population=2",
                "search.generations=1", "final.epochs=1"]


def _summary(s: dict) -> dict:
    return {k: s.get(k) for k in SUMMARY_KEYS}


def runs(c: Check) -> dict:
    dev = [f"evaluation.device={c.device}"]
    out = {"quickstart": _summary(run(ROOT / "configs" / "quickstart.yaml", None, dev + (SMOKE_RUN if c.smoke else [])))}
    if c.fmnist is None:
        out["combined_fmnist"] = "skipped: no Fashion-MNIST (Debian package dataset-fashion-mnist, or --fmnist-root)"
        return out
    extra = (SMOKE_FMNIST if c.smoke else []) + c.fmnist_set()
    for backend in ("local", "vectorized"):
        s = run(ROOT / "configs" / "combined_fmnist.yaml", None, dev + extra + [f"evaluation.backend={backend}"])
        out[f"combined_fmnist_{backend}"] = _summary(s)
    loc, vec = out["combined_fmnist_local"], out["combined_fmnist_vectorized"]
    out["combined_search_speedup_vectorized_over_local"] = loc["search_seconds"] / vec["search_seconds"]
    return out


def precision(c: Check) -> dict:
    """One search per train.precision: the combined_fmnist config (digits in --smoke) on the vectorized backend."""
    config = ROOT / "configs" / ("combined_fmnist.yaml" if c.fmnist else "quickstart.yaml")
    extra = ((SMOKE_FMNIST if c.fmnist else SMOKE_RUN) if c.smoke else []) + c.fmnist_set()
    out = {"config": config.name}
    for p in ("fp32", "tf32", "bf16"):
        s = run(config, None, extra + [f"evaluation.device={c.device}", "evaluation.backend=vectorized",
                                       f"train.precision={p}"])
        out[p] = _summary(s)
    return out


def ray_vs_vectorized(c: Check) -> dict:
    """One generation (K bursts): Ray, 4 actors x 0.25 GPU (vectorized trainer), against local vectorized."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return {"status": "skipped: ray is not installed here (docs/gpu.md: carry it as a wheel)"}
    k = 4 if c.smoke else 16
    config = ROOT / "configs" / ("combined_fmnist.yaml" if c.fmnist else "quickstart.yaml")
    base = [f"search.population={k}", "search.generations=1"] + (SMOKE_FMNIST[:3] if c.smoke else []) + c.fmnist_set()
    ray_set = (["evaluation.num_actors=4", "evaluation.gpus_per_actor=0.25"] if c.cuda else
               ["evaluation.num_actors=2", "evaluation.device=cpu"])  # no GPU: CPU actors, the code path only
    cfgs = {"local vectorized": load_config(config, base + [f"evaluation.device={c.device}", "evaluation.backend=vectorized"]),
            "ray": load_config(config, base + ["evaluation.backend=ray", "evaluation.cpus_per_actor=1",
                                               "evaluation.actor_trainer=vectorized"] + ray_set)}
    data = load_data(cfgs["ray"].data)
    out = {"config": config.name, "K": k}
    for name, cfg in cfgs.items():
        t = time.perf_counter()
        with make_evaluator(cfg, data) as ev:
            start = time.perf_counter() - t
            exp = Experiment(cfg, ev, data)
            masks = [exp.random_mask(cfg.search.initial_sparsity or 0.45, i) for i in range(k)]
            burst = cfg.search.burst_epochs
            ev.evaluate([BurstTask(m, burst, 900 + i) for i, m in enumerate(masks)])  # warm-up
            gen = _timed(c, lambda r: ev.evaluate([BurstTask(m, burst, 1000 * (r + 1) + i) for i, m in enumerate(masks)]),
                         1 if c.smoke else 2)
            out[name] = {"generation_s": gen, "start_s": start, "device": getattr(ev, "device_name", str(c.device))}
    out["ray_time_over_local_vectorized"] = out["ray"]["generation_s"] / out["local vectorized"]["generation_s"]
    return out


SECTIONS = [("environment", environment, 10), ("agreement", agreement, 20), ("throughput", throughput, 120),
            ("runs", runs, 60), ("precision", precision, 45), ("ray", ray_vs_vectorized, 60)]
