"""What the data path costs per training epoch: augmentation, streaming from disk, resident memory.

    python benchmarks/data_cost.py [--quick] [--repeats N] [--sections augment,stream,rss]

augment: one burst (1 epoch of Adam, batch 128, then validation) on a Fashion-MNIST training subset
  with crop (2 pixels, the CIFAR recipe's 4 scaled to 28x28) + flip against the same burst without,
  for LeNet-5 and ResNet-20 at width 8 (BatchNorm).
stream: the same Fashion-MNIST images written as an ImageFolder tree of PNGs, trained (LeNet-5, one
  burst) from memory (`DataSplits.in_memory()`: the same examples, order and batches) and streamed
  through a DataLoader with 0 and 2 worker processes (every image decoded from its file per epoch); with 2
  workers at steady state (the run's loader and its workers kept from burst to burst, data/loaders.py) and
  restarted before every burst (`stream_w2_restart`); then the start-up itself: one batch read by a new
  loader (workers started and shut down) against the same batch from the kept one.
rss: generated ImageFolder trees of 64x64 RGB noise (PNG does not compress it) streamed for one epoch
  each: the process's peak resident-memory growth against the tree's size on disk (two sizes: it should
  not grow with the tree).
Times are each variant's best round, rounds interleaved (rotating order); "paired" is the median
of the per-round ratios. The machine is shared: load only ever adds time.
"""
from __future__ import annotations

import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402

from _common import FMNIST, interleaved, machine, parse, table  # noqa: E402

from evo_pai.core.config import build_config  # noqa: E402
from evo_pai.data import loaders  # noqa: E402
from evo_pai.data.datasets import FASHION_MNIST_ROOT, load_data  # noqa: E402
from evo_pai.data.formats import read_idx  # noqa: E402
from evo_pai.evaluation.local import LocalEvaluator  # noqa: E402
from evo_pai.runs.components import load_components  # noqa: E402
from evo_pai.search.experiment import Experiment  # noqa: E402
from evo_pai.training.tasks import BurstTask  # noqa: E402

SPARSITY = 0.5
CPU = torch.device("cpu")
AUGMENT = {"crop_padding": 2, "flip": True}
MODELS = {"LeNet-5": {"name": "lenet5"}, "ResNet-20 w8": {"name": "resnet20", "params": {"width": 8}}}


def raw(data: dict, model: dict) -> dict:
    return {"seed": 0, "data": data, "model": model, "train": {"batch_size": 128}, "evaluation": {"device": "cpu"}}


def burst(cfg, data):
    """A callable training one burst of a fixed 50 % mask (new seed per round: never a cache hit)."""
    ev = LocalEvaluator(cfg, data)
    mask = Experiment(cfg, ev, data).random_mask(SPARSITY, 0)
    return lambda r: ev.evaluate([BurstTask(mask, 1.0, 1000 + r)])


def augment_cost(train: int, repeats: int) -> None:
    rows = []
    for label, model in MODELS.items():
        plain = build_config(raw({**FMNIST, "train_subset": train}, model))
        crop = build_config(raw({**FMNIST, "train_subset": train, "augment": AUGMENT}, model))
        data = load_data(plain.data)
        t = interleaved({"plain": burst(plain, data), "augmented": burst(crop, data)}, repeats)
        rows.append([label, data.n_train, t.best("plain"), t.best("augmented"), t.ratio("augmented", "plain"),
                     t.paired("augmented", "plain")])
    print(table(["model", "train", "plain_s", "augmented_s", "ratio", "paired"], rows))
    for row in rows:
        print(f"ratio augmented/plain {row[0]} (crop 2 + flip, Fashion-MNIST {row[1]}): {row[4]:.3f}")


def write_fashion_tree(root: Path, train: int, test: int) -> None:
    """The first `train` / `test` Fashion-MNIST images as root/train/<label>/*.png, root/val/<label>/*.png."""
    from PIL import Image

    for split, prefix, n in (("train", "train", train), ("val", "t10k", test)):
        x = read_idx(Path(FASHION_MNIST_ROOT) / f"{prefix}-images-idx3-ubyte.gz")[:n]
        y = read_idx(Path(FASHION_MNIST_ROOT) / f"{prefix}-labels-idx1-ubyte.gz")[:n]
        for i, (img, label) in enumerate(zip(x, y)):
            folder = root / split / str(int(label))
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(folder / f"{i}.png")


def stream_cost(train: int, repeats: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        write_fashion_tree(Path(tmp), train, 256)
        variants, n, kept = {}, 0, None
        for name, workers in (("memory", 0), ("stream_w0", 0), ("stream_w2", 2), ("stream_w2_restart", 2)):
            cfg = build_config(raw({"name": "image_folder", "root": tmp, "params": {"channels": 1},
                                    "workers": workers}, MODELS["LeNet-5"]))
            data = load_data(cfg.data)
            n = data.n_train
            variants[name] = burst(cfg, data.in_memory() if name == "memory" else data)
            if name == "stream_w2":
                kept = data
            if name == "stream_w2_restart":  # this data's own loader, its workers shut down before each burst
                variants[name] = (lambda run, d: lambda r: (loaders.run_loader(d, 2, CPU).close(), run(r)))(
                    variants[name], data)
        t = interleaved(variants, repeats)
        start = startup_cost(kept, repeats)
    print(table(["variant", "train", "best_s", "vs_memory", "paired"],
                [[v, n, t.best(v), t.ratio(v, "memory"), t.paired(v, "memory")] for v in variants]))
    for v in variants:
        if v != "memory":
            print(f"ratio {v}/memory (LeNet-5, Fashion-MNIST {n} PNGs): {t.ratio(v, 'memory'):.3f}")
    print(f"ratio stream_w2_restart/stream_w2: {t.ratio('stream_w2_restart', 'stream_w2'):.3f} "
          f"(paired {t.paired('stream_w2_restart', 'stream_w2'):.3f})")
    print(f"worker start-up (2 workers, started and shut down) per loader: {start:.3f} s; the per-pass loaders of "
          f"before started 2 per burst (training, validation): ~{2 * start:.2f} s per burst, "
          f"~{16 * start:.1f} s per generation of 8")


def startup_cost(data, repeats: int) -> float:
    """Seconds a new 2-worker loader adds to reading one batch (best new - best kept, interleaved rounds)."""
    sets, batch = (data.train_set, data.val_set, data.test_set), [list(range(128))]
    kept = loaders.run_loader(data, 2, CPU)

    def new(r):
        run = loaders.RunLoader(sets, 2, False)
        list(run.read(data.train_set, batch, CPU))
        run.close()
    t = interleaved({"new": new, "kept": lambda r: list(kept.read(data.train_set, batch, CPU))}, repeats)
    print(f"startup: new loader {t.best('new'):.3f} s, kept {t.best('kept'):.3f} s for one batch of 128 PNGs")
    return t.best("new") - t.best("kept")


def rss_peak_during(fn) -> tuple[int, int]:
    """(resident bytes before, peak resident bytes while `fn` runs), sampled every 2 ms by a thread."""
    proc, peak, done = psutil.Process(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            done.wait(0.002)

    before = proc.memory_info().rss
    thread = threading.Thread(target=sample)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    return before, max(peak[0], proc.memory_info().rss)


def rss_growth(images: int) -> None:
    """Peak RSS growth while one epoch streams `images` 64x64 RGB PNGs (after a warm-up burst)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(images):
            folder = Path(tmp) / ("train" if i % 10 else "val") / f"c{i // 10 % 4}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        on_disk = sum(f.stat().st_size for f in Path(tmp).rglob("*.png"))
        cfg = build_config(raw({"name": "image_folder", "root": tmp}, {"name": "mlp", "params": {"hidden": [8]}}))
        data = load_data(cfg.data)
        run = burst(cfg, data)
        run(-1)  # allocator, loader and model warmed up
        before, peak = rss_peak_during(lambda: run(0))
        growth = peak - before
    in_memory = (data.n_train + len(data.val_set)) * 3 * 64 * 64 * 4
    print(f"rss: {data.n_train} training images streamed, {on_disk / 2**20:.1f} MiB of PNG on disk "
          f"({in_memory / 2**20:.1f} MiB as the float32 tensors of the in-memory path); RSS before "
          f"{before / 2**20:.1f} MiB")
    print(f"ratio RSS growth/on-disk size (one streamed epoch): {growth / on_disk:.4f} "
          f"({growth / 2**20:.2f} MiB of {on_disk / 2**20:.1f} MiB)")


def main() -> None:
    def extra(p):
        p.add_argument("--sections", default="augment,stream,rss", help="comma-separated: augment, stream, rss")
        p.add_argument("--rss-images", default=None, help="comma-separated sizes of the rss trees in images "
                                                          "(default 4000,20000; quick 400)")

    args = parse(__doc__.splitlines()[0], extra)
    load_components()
    sections = set(args.sections.split(","))
    print(f"data_cost: {machine()}")
    if "augment" in sections:
        augment_cost(512 if args.quick else 4096, args.repeats)
    if "stream" in sections:
        stream_cost(512 if args.quick else 4096, args.repeats)
    if "rss" in sections:
        for images in (args.rss_images or ("400" if args.quick else "4000,20000")).split(","):
            rss_growth(int(images))


if __name__ == "__main__":
    main()
