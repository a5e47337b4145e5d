"""Training: the masked burst (a pure function), the vectorized trainer, tasks and cost accounting."""
from evo_pai.training.burst import EVAL_BATCH, BurstResult, batch_order, evaluate, make_optimizer, steps_for, train_masked

__all__ = ["EVAL_BATCH", "BurstResult", "batch_order", "evaluate", "make_optimizer", "steps_for", "train_masked"]
