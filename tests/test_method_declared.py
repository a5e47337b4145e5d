"""A method declares itself (core/registry.Method): its progress plan, the search.params it reads, the
config fields preflight checks for it; a plugin method gets all of it by declaring the same fields."""
from __future__ import annotations

import pytest

from conftest import tiny_raw
from evo_pai import EvoPaiError, register_method
from evo_pai.core.config import build_config
from evo_pai.core.registry import METHOD, Method
from evo_pai.runs.components import load_components
from evo_pai.runs.preflight import check_config
from evo_pai.runs.progress import RunProgress
from evo_pai.runs.runner import run_experiment
from evo_pai.search.experiment import SearchOutcome
from evo_pai.search.kstarts import kstarts_population


class Phases(RunProgress):
    def __init__(self):
        self.phases, self.advanced = [], 0

    def phase(self, label, total, generations=None):
        self.phases.append((label, total, generations))

    def advance(self, n=1):
        self.advanced += n if len(self.phases) == 1 else 0


@pytest.fixture
def plugin():
    """Registers `two_bursts` (declared) and `plain` (a bare function) for one test, then removes them."""
    load_components([])

    @register_method("two_bursts", "k random masks, a burst each, twice", plan=lambda cfg: (2 * cfg.search.population, 2),
                     params={"keep": "how many to keep after the first round"}, reads=("search.fitness",),
                     evolutionary=True)
    def two_bursts(exp):
        population = kstarts_population(exp, exp.cfg.search.sparsity)
        for g in range(2):
            exp.evaluate(population, epochs=0.5 * (g + 1))  # advances the search bar by itself
            exp.log_generation(g, population)
        return SearchOutcome(max(population, key=lambda i: i.fitness.values[0]).mask)

    @register_method("plain")
    def plain(exp):
        """a plugin written before methods declared themselves"""
        return SearchOutcome(exp.random_mask(exp.cfg.search.sparsity, 1))

    yield
    for name in ("two_bursts", "plain"):
        METHOD._entries.pop(name, None)


def test_a_plugin_method_gets_its_progress_plan(plugin, tmp_path):
    cfg = build_config(tiny_raw("two_bursts", params={"keep": 2}))
    check_config(cfg)
    rec = Phases()
    summary = run_experiment(cfg, tmp_path, rec)
    assert rec.phases[0] == ("search", 8, 2)  # 2 × population 4, over 2 generations
    assert rec.advanced == 8 and summary["generations_logged"] == 2


def test_a_plugin_method_refuses_an_unknown_param(plugin):
    with pytest.raises(EvoPaiError, match=r"^search\.params\.kep: method 'two_bursts' takes no such parameter; "
                                          r"it takes extra_epochs, keep$"):
        check_config(build_config(tiny_raw("two_bursts", params={"kep": 2})))


def test_a_plain_function_is_wrapped_with_the_defaults(plugin):
    method = METHOD.get("plain")
    assert isinstance(method, Method) and method.description == "a plugin written before methods declared themselves"
    assert method.progress_plan(build_config(tiny_raw("plain"))) == (None, None)  # unknown: a bar without a total
    check_config(build_config(tiny_raw("plain", params={"anything": 1})))  # undeclared params: any key
    with pytest.raises(EvoPaiError, match="search.fitness: unknown fitness 'nope'"):  # every shared field is checked
        check_config(build_config(tiny_raw("plain", fitness="nope")))


def test_imp_refuses_a_typo_in_its_params():
    with pytest.raises(EvoPaiError, match=r"search\.params\.round_epochz: method 'imp' takes no such parameter; "
                                          r"it takes extra_epochs, prune_fraction, rewind_epochs, round_epochs"):
        check_config(build_config(tiny_raw("imp", params={"round_epochz": 3})))


def test_one_shot_methods_take_their_scorers_keywords():
    check_config(build_config(tiny_raw("grasp", params={"temperature": 100.0, "batch_size": 64, "examples": 64})))
    check_config(build_config(tiny_raw("synflow", params={"iterations": 10})))
    with pytest.raises(EvoPaiError, match=r"search\.params\.iterations: method 'snip' takes no such parameter"):
        check_config(build_config(tiny_raw("snip", params={"iterations": 10})))


def test_fields_a_method_does_not_read_are_not_checked_for_it():
    """nsga2 scores by search.nsga2.objectives and mutates by search.nsga2: search.fitness and the
    explore fields are not its own (`evo-pai list` and docs/config.md say so); kstarts reads fitness."""
    load_components([])
    assert "search.fitness" not in METHOD.get("nsga2").reads and "search.explore" not in METHOD.get("nsga2").reads
    check_config(build_config(tiny_raw("nsga2", fitness="nope", explore_mutation="nope")))
    with pytest.raises(EvoPaiError, match="search.fitness: unknown fitness 'nope'"):
        check_config(build_config(tiny_raw("kstarts", fitness="nope")))


def test_the_declarations_the_run_and_study_layers_read():
    load_components([])
    evolutionary = {e.name for e in METHOD if e.obj.evolutionary}
    assert evolutionary == {"kstarts", "kstarts_sh", "dissipating", "combined", "nsga2", "pbt"}  # independent: the control
    assert [e.name for e in METHOD if e.obj.members] == ["nsga2"]
    assert [e.name for e in METHOD if not e.obj.sparse] == ["dense"]
    assert all(e.obj.plan is not None and e.obj.params is not None for e in METHOD)  # every built-in declares
