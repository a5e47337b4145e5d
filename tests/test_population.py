"""Independent lineages and population-based training (issue 20): per-model hyperparameters on every
backend, who copies whom and what is perturbed, genes checkpointed and resumed exactly."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from conftest import assert_same_training, tiny_raw, whole_and_interrupted, without_timing
from evo_pai.core.config import build_config
from evo_pai.core.errors import EvoPaiError
from evo_pai.core.individual import Individual, derive_seed
from evo_pai.core.masks import MaskSet
from evo_pai.core.registry import METHOD
from evo_pai.data.datasets import load_data
from evo_pai.evaluation.base import make_evaluator
from evo_pai.operators.hyperparams import explore, exploit_pairs, parse_gene, parse_genes
from evo_pai.runs.preflight import check_config
from evo_pai.runs.runner import run_experiment, seed_everything
from evo_pai.search.experiment import Experiment
from evo_pai.search.lineages import exploit
from evo_pai.training.carry import Carry
from evo_pai.training.tasks import BurstTask

pytestmark = pytest.mark.usefixtures("one_thread")


def raw64(optimizer: str = "sgd", backend: str = "local", **search) -> dict:
    raw = tiny_raw(**search)
    raw["train"] = {**raw["train"], "dtype": "float64", "optimizer": optimizer, "momentum": 0.9,
                    "weight_decay": 1e-3, "lr_schedule": "cosine"}
    raw["evaluation"] = {"device": "cpu", "backend": backend}
    return raw


@pytest.mark.parametrize("optimizer,momentum", [("sgd", 0.9), ("sgd", 0.0), ("adam", 0.9)])
def test_vectorized_trains_each_model_with_its_own_lr_and_weight_decay(optimizer, momentum):
    """Per-model lr scale and weight decay in the stacked step: each model as the local backend trains
    it alone (float64, to 1e-10), from θ0 and from a carried state; the genes change the result."""
    raw, raw_vec = raw64(optimizer), raw64(optimizer, "vectorized")
    for r in (raw, raw_vec):
        r["train"]["momentum"] = momentum
    cfg = build_config(raw)
    data = load_data(cfg.data)
    local = make_evaluator(cfg, data)
    vec = make_evaluator(build_config(raw_vec), data)
    exp = Experiment(cfg, local, data)
    per = exp.steps(1.0)
    parent = local.evaluate([BurstTask(exp.dense_mask(), 1.0, 3, keep_state=True, horizon=3 * per)])[0]
    genes = [(1.0, None), (0.5, 0.0), (2.0, 5e-3), (1.0, 1e-2)]
    tasks = [BurstTask(exp.random_mask(0.5, i), 1.0, 10 + i, start=parent.state, opt_state=parent.opt_state,
                       keep_state=True, offset=per, horizon=3 * per, lr_scale=s, weight_decay=w)
             for i, (s, w) in enumerate(genes)]
    tasks += [BurstTask(exp.random_mask(0.6, 7 + i), 1.0, 30 + i, keep_state=True, lr_scale=s, weight_decay=w)
              for i, (s, w) in enumerate([(0.7, 2e-3), (1.5, None)])]  # fresh optimizers: their own group
    a_res, b_res = local.evaluate(tasks), vec.evaluate(tasks)
    for a, b in zip(a_res, b_res):
        assert_same_training(a, b)
    plain = local.evaluate([BurstTask(tasks[1].mask, 1.0, 11, start=parent.state, opt_state=parent.opt_state,
                                      keep_state=True, offset=per, horizon=3 * per)])[0]
    assert plain.metrics["val_loss"] != a_res[1].metrics["val_loss"]


# -- who copies whom, what is perturbed (operators/hyperparams.py) ---------------------------------
def test_bottom_quantile_copies_a_top_member():
    """Ray Tune's quantile rule: K=4, 0.25 -> the single worst copies the single best; K=8 -> the two
    worst each copy one of the two best; at most half the population; ties: the earlier ranks lower."""
    g = torch.Generator().manual_seed(0)
    assert exploit_pairs([0.5, 0.9, 0.1, 0.7], 0.25, g) == [(2, 1)]
    scores = [0.3, 0.8, 0.1, 0.6, 0.95, 0.2, 0.5, 0.7]
    pairs = exploit_pairs(scores, 0.25, g)
    assert [i for i, _ in pairs] == [2, 5] and all(j in (4, 1) for _, j in pairs)
    assert exploit_pairs([0.1, 0.2, 0.3], 0.5, g) == [(0, 2)]  # ceil(1.5) = 2 > 3/2: one
    assert exploit_pairs([0.5, 0.5], 0.25, g) == [(0, 1)]
    assert exploit_pairs([0.4], 0.25, g) == []
    again = [exploit_pairs(scores, 0.5, torch.Generator().manual_seed(3)) for _ in range(2)]
    assert again[0] == again[1] and {j for _, j in again[0]} <= {4, 1, 7, 3}  # deterministic from the seed


def test_explore_perturbs_ranges_by_a_factor_and_moves_choices_to_a_neighbour():
    g = torch.Generator().manual_seed(1)
    lr = parse_gene("lr_scale", {"low": 0.1, "high": 2.0, "log": True})
    seen = {round(lr.perturb(1.0, (0.8, 1.2), 0.0, g), 12) for _ in range(40)}
    assert seen == {0.8, 1.2}
    assert lr.perturb(1.9, (1.2,), 0.0, g) == 2.0 and lr.perturb(0.11, (0.8,), 0.0, g) == 0.1  # clipped
    resampled = [lr.perturb(1.0, (0.8, 1.2), 1.0, g) for _ in range(50)]
    assert all(0.1 <= v <= 2.0 for v in resampled) and len(set(resampled)) == 50
    exp_gene = parse_gene("schedule_exponent", {"choices": [1, 2, 3, 4]})
    assert {exp_gene.perturb(3.0, (0.8, 1.2), 0.0, g) for _ in range(40)} == {2.0, 4.0}
    assert {exp_gene.perturb(4.0, (0.8, 1.2), 0.0, g) for _ in range(40)} == {3.0, 4.0}  # clipped at the end
    assert exp_gene.perturb(2.5, (0.8, 1.2), 0.0, g) in (1.0, 2.0, 3.0, 4.0)  # not a choice: resampled
    wd = parse_gene("weight_decay", [0, 0.01])
    hp = explore({"lr_scale": 1.0, "weight_decay": 0.005}, [lr, wd], (0.5,), 0.0, g)
    assert hp == {"lr_scale": 0.5, "weight_decay": 0.0025}


@pytest.mark.parametrize("genes,needle", [
    ({"momentum": [0.5, 0.9]}, "search.pbt.genes.momentum: unknown gene"),
    ({"lr_scale": [2.0, 1.0]}, "search.pbt.genes.lr_scale: low (2.0) must be below high (1.0)"),
    ({"lr_scale": {"low": 0, "high": 1, "log": True}}, "search.pbt.genes.lr_scale: a log range needs low > 0"),
    ({"lr_scale": [0, 1]}, "search.pbt.genes.lr_scale: 0.0 is out of range; lr_scale must be > 0"),
    ({"weight_decay": [-1, 1]}, "search.pbt.genes.weight_decay: -1.0 is out of range"),
    ({"explore_fraction": {"choices": [0.1, 2]}}, "explore_fraction must be <= 1"),
    ({"explore_fraction": {"choices": []}}, "choices must be a non-empty list of numbers"),
    ({"lr_scale": [1, 2, 3]}, "give [low, high]"),
    ({"lr_scale": {"low": 1, "hi": 2}}, "give [low, high]"),
])
def test_bad_genes_are_one_line_errors(genes, needle):
    cfg = build_config(tiny_raw("pbt", inherit="parent", pbt={"genes": genes}))
    with pytest.raises(EvoPaiError) as err:
        check_config(cfg)
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("search,needle", [
    ({"schedule": "exponential", "pbt": {"genes": {"schedule_exponent": [1, 4]}}}, "set search.schedule to cubic"),
    ({"explore_mutation": None, "pbt": {"genes": {"explore_fraction": [0, 0.3]}}}, "takes no fraction"),
    ({"inherit": "rewind"}, "search.inherit: pbt's exploit copies trained weights"),
])
def test_genes_that_do_not_fit_the_recipe_are_refused(search, needle):
    raw = tiny_raw("pbt", **{"inherit": "parent", **search})
    with pytest.raises(EvoPaiError, match=needle):
        check_config(build_config(raw))


# -- the searches ----------------------------------------------------------------------------------
def lineage_raw(method: str = "pbt", backend: str = "local", **search) -> dict:
    """pbt over every gene, members drawn from the spaces (so their hyperparameters differ from the start)."""
    pbt = {"genes": {"lr_scale": {"low": 0.3, "high": 3.0, "log": True}, "weight_decay": [0.0, 0.01],
                     "explore_fraction": [0.05, 0.3], "schedule_exponent": {"choices": [1, 2, 3, 4]}},
           "initial": "sample"}
    raw = raw64("sgd", backend, **{"inherit": "parent", "generations": 4, "mutation": "magnitude",
                                   "explore_mutation": "regrow", "pbt": pbt, **search})
    raw["search"]["method"] = method
    return raw


def test_exploit_copies_mask_state_level_and_genes_then_perturbs():
    cfg = build_config(lineage_raw(pbt={"genes": {"lr_scale": [0.1, 10.0]}, "resample_probability": 0.0}))
    data = load_data(cfg.data)
    exp = Experiment(cfg, make_evaluator(cfg, data), data)
    population = [Individual(exp.random_mask(0.5, i)) for i in range(4)]
    for i, ind in enumerate(population):
        ind.carry, ind.hparams, ind.traits = Carry({"w": torch.full((2,), float(i))}, None, 10 + i), {"lr_scale": 1.0 + i}, {}
        ind.fitness.values = (0.1 * i,)
    levels = [0.5, 0.6, 0.7, 0.8]
    before = [ind.clone() for ind in population]
    exploit(exp, population, levels, [(0, 3)], parse_genes(cfg.search.pbt.genes))
    copy = population[0]
    assert copy.mask == before[3].mask and copy.carry is before[3].carry and levels == [0.8, 0.6, 0.7, 0.8]
    assert copy.origin == "exploit" and round(copy.hparams["lr_scale"] / 4.0, 12) in (0.8, 1.2)
    assert population[3].hparams == {"lr_scale": 4.0}  # the donor keeps its own genes
    assert [p.carry for p in population[1:]] == [b.carry for b in before[1:]]


def final_loss(raw: dict, mask, lr_scale: float = 1.0, weight_decay: float | None = None) -> float:
    """Test loss of `mask`'s final training (from θ0, the final seed) under a recipe written out by hand:
    train.lr x lr_scale and, when given, weight_decay as train.weight_decay."""
    r = copy.deepcopy(raw)
    r["train"]["lr"] *= lr_scale
    if weight_decay is not None:
        r["train"]["weight_decay"] = weight_decay
    cfg = build_config(r)
    data = load_data(cfg.data)
    task = BurstTask(mask, cfg.final.epochs, derive_seed(cfg.seed, "final"), keep_state=True, test=True)
    with make_evaluator(cfg, data) as ev:
        return ev.evaluate([task])[0].metrics["test_loss"]


def test_pbt_logs_genes_and_exploits_and_trains_the_winner_with_its_genes(tmp_path):
    """The whole run: exploits copy the worst from the best, the winner is the last generation's
    best-validation member, and the final training (float64, to 1e-10) is the winner's mask trained
    with train.lr x its lr_scale and its weight decay — not with the recipe's."""
    raw = lineage_raw()
    raw["train"]["threads"] = 1
    summary = run_experiment(build_config(raw), tmp_path)
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(len(r["hparams"]["lr_scale"]) == 4 for r in records)
    assert [len(r["exploit"]) for r in records] == [1, 1, 1, 0]  # K=4, quantile 0.25; none after the last
    for r, nxt in zip(records, records[1:]):
        (i, j), = r["exploit"]
        acc = r["val_accuracy"]
        assert acc[i] == min(acc) and acc[j] == max(acc) and i != j
        assert nxt["levels"][i] >= r["levels"][j]  # the copy continues the donor's schedule position
        others = [k for k in range(4) if k != i]
        assert all(nxt["hparams"][n][k] == r["hparams"][n][k] for n in r["hparams"] for k in others)
    assert records[-1]["levels"] == [0.8] * 4
    last = records[-1]
    best = last["val_accuracy"].index(max(last["val_accuracy"]))  # ties: the first
    winner = summary["winner_hparams"]
    assert summary["winner_index"] == best
    assert winner == {n: last["hparams"][n][best] for n in last["hparams"]}
    assert winner["lr_scale"] != 1.0 and winner["weight_decay"] != raw["train"]["weight_decay"]
    mask = MaskSet.load(tmp_path / "mask.safetensors")
    own = final_loss(raw, mask, winner["lr_scale"], winner["weight_decay"])
    recipe = final_loss(raw, mask)
    assert abs(own - recipe) > 1e-4  # the genes matter to the final training
    assert abs(summary["test_loss"] - own) <= 1e-10, (summary["test_loss"], own, recipe)


def continued(raw: dict) -> dict:
    """final.init: continue — the final training goes on from the winner's trained weights and optimizer
    state, so its test loss (float64) depends on every burst of the winner's lineage."""
    raw["final"] = {**raw["final"], "init": "continue"}
    return raw


def test_independent_is_combined_without_selection_at_equal_compute():
    """One lineage: `independent` and `combined` (elite 1, no exploration) are the same search — the
    same mask and, continued from the lineage's trained state, the same test loss to 1e-10; K lineages
    cost K x G bursts, as a population of K over G generations."""
    same = {"population": 1, "explore_mutation": None, "fitness": "val_accuracy"}
    a, b = (run_experiment(build_config(continued(lineage_raw(m, **same))), None) for m in ("independent", "combined"))
    assert a["winner_index"] == b["winner_index"] == 0 and a["search_model_epochs"] == b["search_model_epochs"] == 4
    assert a["sparsity"] == b["sparsity"] and a["layer_sparsity"] == b["layer_sparsity"]
    assert abs(a["test_loss"] - b["test_loss"]) <= 1e-10, (a["test_loss"], b["test_loss"])  # float64
    four = run_experiment(build_config(lineage_raw("independent")), None)
    assert four["search_model_epochs"] == 16.0 and "winner_hparams" not in four


def test_pbt_resumed_after_an_exploit_equals_the_uninterrupted_run(tmp_path, monkeypatch):
    """Killed right after the checkpoint that follows generation 1's exploit (copies, perturbed genes,
    per-lineage levels): the resumed run ends with the uninterrupted run's summary, log and plot data."""
    cfg = build_config(lineage_raw())
    whole, ckpt = whole_and_interrupted(cfg, tmp_path, monkeypatch, 2)
    assert ckpt.generation == 1 and all(ind.hparams and ind.carry for ind in ckpt.state["population"])
    assert ckpt.records[-1]["exploit"] and ckpt.state["levels"]
    resumed = run_experiment(cfg, tmp_path / "run", resume=ckpt)
    assert without_timing(whole) == without_timing(resumed)
    logs = [[{k: v for k, v in json.loads(line).items() if k != "wall_seconds"}
             for line in (tmp_path / d / "log.jsonl").read_text().splitlines()] for d in ("whole", "run")]
    assert logs[0] == logs[1] and (tmp_path / "run" / "hyperparams.png").stat().st_size > 5000


def backend_run(backend: str, **evaluation):
    """(mask, generation log, trained weights): every member's weights after each generation but the
    last (what the search checkpoints), then the winner's, which final.init: continue starts from."""
    raw = continued(lineage_raw(backend=backend))
    raw["evaluation"].update(evaluation)
    cfg = build_config(raw)
    data = load_data(cfg.data)
    seed_everything(cfg.seed)
    records: list[dict] = []
    weights: list[dict] = []
    with make_evaluator(cfg, data) as ev:
        exp = Experiment(cfg, ev, data, log=records.append)
        exp.checkpoint = lambda state: weights.extend({k: v.clone() for k, v in ind.carry.weights.items()}
                                                      for ind in state["population"])
        outcome = METHOD.get(cfg.search.method)(exp)
    assert len(weights) == 3 * 4 and outcome.final_start is not None
    return outcome.mask, records, [*weights, outcome.final_start]


def test_backends_agree_with_per_model_hyperparameters_float64(local_ray):
    """local, vectorized and Ray (sequential and vectorized actors): one pbt search whose members train
    with their own lr scale and weight decay — same masks, genes and exploits, every member's trained
    weights after every generation to 1e-10 (float64)."""
    ref_mask, ref, ref_weights = backend_run("local")
    runs = [backend_run("vectorized"),
            backend_run("ray", num_actors=2, cpus_per_actor=1, actor_trainer="sequential"),
            backend_run("ray", num_actors=2, cpus_per_actor=1, actor_trainer="vectorized")]
    assert len({round(v, 9) for v in ref[0]["hparams"]["lr_scale"]}) == 4  # the genes differ per member
    for mask, records, weights in runs:
        for n, (w, v) in enumerate(zip(weights, ref_weights)):
            assert w.keys() == v.keys() and max(float((w[k] - v[k]).abs().max()) for k in w) <= 1e-10, n
        assert mask == ref_mask and len(records) == len(ref) == 4
        for x, y in zip(records, ref):
            assert x["hparams"] == y["hparams"] and x["exploit"] == y["exploit"] and x["levels"] == y["levels"]
            assert max(abs(a - b) for a, b in zip(x["val_accuracy"], y["val_accuracy"])) <= 1e-10
