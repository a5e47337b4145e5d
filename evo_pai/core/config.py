"""Run configuration: a validated, frozen pydantic tree loaded from YAML plus `--set` overrides.

Every value the paper leaves open is a field here with a documented default; see docs/config.md.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from evo_pai.core.errors import EvoPaiError
from evo_pai.core.config_base import MaskConfig, _Section  # noqa: F401  (re-exported: evo_pai.core.config.MaskConfig)


class AugmentConfig(_Section):
    # Per training batch, on the training device, from the burst's seed: off by default (the CIFAR
    # recipes use crop_padding 4 and flip). Validation and test batches are never augmented.
    crop_padding: int = Field(0, ge=0)  # random crop of the input size from the image padded by this many pixels
    flip: bool = False  # horizontal flip with probability 1/2


class DataConfig(_Section):
    name: str = "digits"
    root: str | None = None  # None: the dataset's default location
    val_fraction: float = Field(0.1, gt=0, lt=1)
    train_subset: int | None = Field(None, ge=10)  # first N (shuffled) training examples
    test_subset: int | None = Field(None, ge=10)
    split_seed: int = 0  # fixed so every seed of a study sees the same split
    params: dict[str, Any] = {}  # dataset-specific options (e.g. synthetic sizes)
    augment: AugmentConfig = AugmentConfig()
    workers: int = Field(0, ge=0)  # DataLoader worker processes for a streamed dataset (0: in the training process)


class ModelConfig(_Section):
    name: str = "mlp"
    params: dict[str, Any] = {}  # model-specific keyword arguments, e.g. {hidden: [300, 100]}
    # Weight init of every Linear/Conv2d (drawn from torch's seeded RNG after the model is built):
    # PyTorch's default (kaiming_uniform with a=sqrt(5)), or He / Glorot; biases zero or default.
    init: Literal["default", "kaiming_normal", "kaiming_uniform", "xavier_normal"] = "default"
    bias_init: Literal["default", "zero"] = "default"


class TrainConfig(_Section):
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"  # adamw: weight_decay decoupled, as torch.optim.AdamW
    lr: float = Field(1.2e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)  # of the training loss (F.cross_entropy's); evaluation: plain
    grad_clip_norm: float | None = Field(None, gt=0)  # each model's gradient norm (all parameters) clipped to this
    batch_size: int = Field(128, ge=1)
    dtype: Literal["float32", "float64"] = "float32"
    # Learning-rate schedule over a run, or a lineage of runs carrying their state (inheritance): docs/config.md
    lr_schedule: Literal["constant", "cosine", "step"] = "constant"
    lr_warmup_epochs: float = Field(0.0, ge=0)  # linear warm-up at the start of a schedule
    lr_milestones: list[float] = [0.5, 0.75]  # step: fractions of the schedule where lr *= lr_gamma
    lr_gamma: float = Field(0.1, gt=0, le=1)

    @field_validator("lr_milestones")
    @classmethod
    def _milestones(cls, v: list[float]) -> list[float]:
        if any(not 0 < m < 1 for m in v) or v != sorted(v):
            raise ValueError("must be increasing fractions of the schedule in (0, 1), e.g. [0.5, 0.75]")
        return v
    # fp32 everywhere (backends agree); tf32: CUDA matmuls/convolutions in TF32; bf16 autocast forwards (precision.py)
    precision: Literal["fp32", "tf32", "bf16"] = "fp32"

    @model_validator(mode="after")
    def _precision_needs_float32(self) -> "TrainConfig":
        if self.precision != "fp32" and self.dtype != "float32":
            raise ValueError(f"precision {self.precision} needs float32 weights, not {self.dtype}; set "
                             "train.dtype float32 or train.precision fp32")
        return self

    # torch intra-op threads; None/"auto": chosen per run from the model's work per step, the usable
    # CPUs and their load (evo_pai/training/threads.py); an int fixes it (--threads N)
    threads: int | None = None

    @field_validator("threads", mode="before")
    @classmethod
    def _threads(cls, v: object) -> int | None:
        if v is None or v == "auto":
            return None
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"must be a positive whole number of threads, or auto (got {v!r})")
        return v


class DGConfig(_Section):
    tau: float = Field(0.1, ge=0)  # |w_t - w_0| <= tau * |w_0| counts as "dissipated"
    mode: Literal["threshold", "schedule"] = "threshold"
    scope: Literal["layer", "global"] = "layer"
    max_step_fraction: float = Field(0.5, gt=0, le=1)  # at most this share of kept weights per step
    epochs: int = Field(4, ge=1)  # dissipating method: pruning epochs to reach the target


class NSGA2Config(_Section):
    """`search.method: nsga2` — one population over many densities (docs/config.md)."""

    # Density (1 - sparsity) of any member: min, max. 0.005-0.2 = 80 %-99.5 % sparse.
    density_range: tuple[float, float] = (0.005, 0.2)
    # The density grid members live on: a list of sparsities (each inside density_range), or an
    # int N = N log-spaced densities spanning density_range. A prune/grow step moves 1..max_move levels.
    levels: int | list[float] = [0.8, 0.9, 0.95, 0.98, 0.99, 0.995]
    max_move: int = Field(1, ge=1)
    # How a child is made from its parent: prune (denser -> sparser), grow (sparser -> denser),
    # swap (same density). Relative weights; 0 switches a move off.
    moves: dict[Literal["prune", "grow", "swap"], float] = {"prune": 0.4, "grow": 0.3, "swap": 0.3}
    # Which mutation prunes (name -> relative weight: mix structured and unstructured ones), grows, swaps.
    prune_mutations: dict[str, float] = {"magnitude": 1.0}
    grow_mutation: str = "grow"
    swap_mutation: str = "regrow"  # RigL's drop-smallest-|w| / grow-largest-|g| swap, density kept
    mutation_params: dict[str, dict[str, Any]] = {}  # per mutation name, e.g. {neuron: {fraction: 0.2}}
    # First: a registered fitness (maximised); then 1-2 costs (minimised): kept_weights, flops
    # (sparse forward FLOPs), compact_flops (dense FLOPs of the compacted network), latency
    # (measured seconds of the compacted network at latency_batch; noisy: not reproducible).
    objectives: list[str] = Field(["val_accuracy", "kept_weights"], min_length=2, max_length=3)
    # Generation 0: "gradual" = one network trained init_epochs and pruned in init_steps steps on a cubic
    # schedule down to the sparsest level (gmp's loop), a mask kept as it passes each level;
    # "magnitude" = the prune mutations applied to one dense burst of init_epochs;
    # "random" = random masks (pure pruning at initialisation, usually worse).
    init: Literal["gradual", "magnitude", "random"] = "gradual"
    init_epochs: float = Field(4.0, gt=0)
    init_steps: int = Field(4, ge=1)
    latency_batch: int = Field(1, ge=1)

    @field_validator("density_range")
    @classmethod
    def _range(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError("must be [min, max] densities with 0 < min <= max <= 1, e.g. [0.005, 0.2]")
        return v

    @field_validator("moves", "prune_mutations")
    @classmethod
    def _weights(cls, v: dict) -> dict:
        if any(w < 0 for w in v.values()) or not any(w > 0 for w in v.values()):
            raise ValueError("weights must be >= 0 with at least one > 0")
        return v


class InitialSparsityRule(_Section):
    fraction: float = Field(gt=0, le=1)  # p = fraction * target


class DSTConfig(_Section):
    """Dynamic sparse training (methods rigl and set); defaults from Evci et al. 2020, see docs/config.md."""

    drop_fraction: float = Field(0.3, gt=0, le=1)  # f: share of each layer's kept weights replaced at first
    interval_epochs: float = Field(0.25, gt=0)  # ΔT in epochs (RigL's 100 steps ≈ 0.26 CIFAR / 0.32 ImageNet epochs)
    end_fraction: float = Field(0.75, gt=0, le=1)  # T_end: no mask update after this share of training
    anneal: Literal["cosine", "constant"] = "cosine"  # f_t = f (1 + cos(π t / T_end)) / 2, or f throughout


class PBTConfig(_Section):
    """`search.pbt` — exploit / explore for `search.method: pbt` (Ray Tune's PopulationBasedTraining)."""
    interval: int = Field(1, ge=1)  # generations between exploit steps
    quantile: float = Field(0.25, gt=0, le=0.5)  # bottom share copies the top share
    perturb_factors: list[Annotated[float, Field(gt=0)]] = Field([0.8, 1.2], min_length=1)
    resample_probability: float = Field(0.25, ge=0, le=1)
    genes: dict[str, Any] = {}  # gene -> [low, high] | {low, high, log} | {choices: [...]} (operators/hyperparams.py)
    initial: Literal["recipe", "sample"] = "recipe"  # generation 0: the recipe's values, or drawn from the spaces


class SearchConfig(_Section):
    method: str = "combined"
    sparsity: float = Field(0.9, ge=0, lt=1)
    population: int = Field(8, ge=1)
    # p, combined's first sparsity: a number, `sqrt` (1 - sqrt(1 - target)), {fraction: f} (f * target),
    # or None (0.5 * target). The rules let one study row serve every target.
    initial_sparsity: Annotated[float, Field(ge=0, lt=1)] | Literal["sqrt"] | InitialSparsityRule | None = None

    @field_validator("initial_sparsity", mode="before")
    @classmethod
    def _initial_rule(cls, v: Any) -> Any:
        # One clear line instead of pydantic's error per member of the union.
        ok = (v is None or v == "sqrt" or (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1)
              or (isinstance(v, dict) and set(v) == {"fraction"} and isinstance(v["fraction"], (int, float))
                  and 0 < v["fraction"] <= 1))
        if not ok:
            raise ValueError(f"got {v!r}; use a number in [0, 1), 'sqrt' or {{fraction: f}} with 0 < f <= 1 "
                             "(with --set, quote it and keep the space: \"search.initial_sparsity={fraction: 0.5}\")")
        return v
    burst_epochs: float = Field(1.0, ge=0)  # 0: no training, the start weights evaluated (adaptive BN without a burst)
    adaptive_bn_batches: int = Field(0, ge=0)  # > 0: bursts report abn_val_* (training/adaptive_bn.py); 0: off
    generations: int = Field(4, ge=1)
    fitness: str = "mixed"
    fitness_params: dict[str, Any] = {}
    selection: str = "tournament"
    tournament_size: int = Field(3, ge=1)
    elite: int = Field(1, ge=0)
    crossover: str = "layerwise"
    crossover_prob: float = Field(0.5, ge=0, le=1)
    mutation: str = "dissipating_gradients"
    mutation_params: dict[str, Any] = {}
    # Exploration: a density-keeping mutation applied to non-elite children with this probability,
    # and always to a child whose mask duplicates another's (DG alone is deterministic).
    explore_mutation: str | None = "random_swap"
    explore_prob: float = Field(0.2, ge=0, le=1)
    explore_params: dict[str, Any] = {}
    dg: DGConfig = DGConfig()
    dst: DSTConfig = DSTConfig()
    nsga2: NSGA2Config = NSGA2Config()
    pbt: PBTConfig = PBTConfig()
    params: dict[str, Any] = {}  # method-specific options for plugin or baseline methods
    # combined: a child trains from its parent's trained weights and optimizer state (parent) or
    # from θ0 (rewind, the paper's loop).
    inherit: Literal["rewind", "parent"] = "rewind"
    # How sparsity rises in combined / dissipating / gmp: cubic (Zhu & Gupta), exponential
    # (density (1-s)^(t/n): the same fraction of the rest each step, like IMP) or linear.
    schedule: Literal["cubic", "exponential", "linear"] = "cubic"
    # Loops that keep training one network (dissipating, gmp, kstarts_sh, inherit: parent) carry the
    # optimizer state and the batch stream across steps (keep) or restart both each step (reset: v1).
    optimizer_state: Literal["keep", "reset"] = "keep"


class FinalConfig(_Section):
    epochs: int = Field(10, ge=0)
    init: Literal["rewind", "continue"] = "rewind"
    # nsga2: which front members get the final training: all, or the member nearest each sparsity.
    members: Literal["all"] | list[float] = "all"

    @field_validator("members")
    @classmethod
    def _members(cls, v):
        if isinstance(v, list) and (not v or not all(0.0 <= x < 1.0 for x in v)):
            raise ValueError("must be 'all' or a non-empty list of sparsities in [0, 1), e.g. [0.9, 0.95, 0.98]")
        return v


class EvaluationConfig(_Section):
    backend: str = "local"
    device: str = "auto"
    address: str | None = None
    num_actors: int | Literal["auto"] = "auto"
    cpus_per_actor: float = Field(1.0, gt=0)
    gpus_per_actor: float | None = Field(None, ge=0)
    max_retries: int = Field(3, ge=0)
    # Ray: every actor must be ready (data loaded, model built) within this many seconds; one that is
    # not (its node died, no free CPU for its restart) is dropped, and with none ready the run stops
    actor_start_timeout_s: float = Field(180.0, gt=0)
    chunk_size: int | None = Field(None, ge=1)
    max_memory_gb: float | None = Field(None, gt=0)
    # inside each Ray actor: train its share of the population together (vectorized) or one by one
    actor_trainer: Literal["auto", "vectorized", "sequential"] = "auto"
    # vectorized trainer: torch.compile the stacked forward and the masked-gradient update
    compile: bool = False

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError("must be auto, cpu, cuda or cuda:N")


class LoggingConfig(_Section):
    # Extra sinks for the generation log (log.jsonl is always written); see evo_pai/runs/loggers.py.
    tensorboard: bool = False  # events under <run>/tensorboard; needs `pip install evo-pai[tensorboard]`


STRUCTURED_ABN_BATCHES = 20  # channel masks' default: adaptive BN on 20 training batches


class Config(_Section):
    seed: int = 0
    plugins: list[str] = []
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    masks: MaskConfig = MaskConfig()
    train: TrainConfig = TrainConfig()
    search: SearchConfig = SearchConfig()
    final: FinalConfig = FinalConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    logging: LoggingConfig = LoggingConfig()

    @model_validator(mode="after")
    def _structured_fitness(self) -> "Config":
        # Channel masks rank width candidates by adaptive-BN accuracy after the burst unless a fitness is
        # named: it predicted fully trained accuracy best (Spearman 0.64 vs 0.45, docs/structured.md)
        s = self.search
        if self.masks.granularity == "channel" and "fitness" not in s.model_fields_set:
            update = {"fitness": "adaptive_bn_accuracy"}
            if "adaptive_bn_batches" not in s.model_fields_set:
                update["adaptive_bn_batches"] = STRUCTURED_ABN_BATCHES
            object.__setattr__(self, "search", s.model_copy(update=update))
        return self


def _format_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "config"
    msg = err["msg"].removeprefix("Value error, ")  # pydantic's prefix for a validator's ValueError
    if err["type"] == "extra_forbidden":
        msg = "unknown key; check the spelling against docs/config.md"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"config error: {loc}: {msg}{more}"


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text or text.startswith("="):
        raise EvoPaiError(f"--set '{text}': expected KEY=VALUE, e.g. --set search.sparsity=0.95")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def set_dotted(raw: dict, key: str, value: Any, where: str) -> None:
    """raw[a][b][c] = value for the key 'a.b.c', making sections on the way; `where` starts the error line."""
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise EvoPaiError(f"{where}: '{part}' is not a section")
    node[parts[-1]] = value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for text in overrides:
        path, value = parse_override(text)
        set_dotted(raw, ".".join(path), value, f"--set {text}")
    return raw


def shipped_configs() -> Path:
    """The example configs: evo_pai/configs in an installed wheel, the repository's configs/ in a checkout."""
    package = Path(__file__).resolve().parents[1]  # evo_pai/ (this file is evo_pai/core/config.py)
    packaged = package / "configs"
    return packaged if packaged.is_dir() else package.parent / "configs"


def resolve_config(path: str | Path) -> Path:
    """A path as given, or a bare name (`quickstart`, `study_smoke.yaml`) of a shipped config."""
    p = Path(path)
    if p.exists() or len(p.parts) != 1:
        return p
    for name in (p.name, f"{p.name}.yaml"):
        if (shipped_configs() / name).is_file():
            return shipped_configs() / name
    return p


def read_yaml(path: str | Path) -> dict:
    p = resolve_config(path)
    if not p.is_file():
        names = sorted(q.stem for q in shipped_configs().glob("*.yaml"))
        shipped = f", or a shipped config by name: {', '.join(names)}" if names else ""
        raise EvoPaiError(f"config file '{p}' not found: pass the path of a YAML file, e.g. configs/quickstart.yaml"
                          f"{shipped}")
    try:
        raw = yaml.safe_load(p.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise EvoPaiError(f"config file '{p}' cannot be read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise EvoPaiError(f"config file '{p}' is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                          f"{exc.start}); save it as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise EvoPaiError(f"config file '{p}' is not valid YAML{where}: fix the syntax") from exc
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise EvoPaiError(f"config file '{p}' must be a YAML mapping of sections (seed, data, model, search, ...)")
    return raw


def build_config(raw: dict) -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise EvoPaiError(_format_error(exc)) from None


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    return build_config(apply_overrides(read_yaml(path), list(overrides)))


def to_dict(cfg: Config) -> dict:
    return cfg.model_dump(mode="json")
