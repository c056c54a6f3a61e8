"""Evaluation: tasks, metrics, baselines, paired statistics and the promotion gate.

Imports only ``schemas`` (see docs/ARCHITECTURE.md). Model code (torch, transformers, peft) is imported
when a model is loaded, so the gate and the statistics work without the training extras.
"""

from eval.examples import EvalExample, EvalTask, TaskKind, eval_set_hash
from eval.gate import GateThresholds, GateVerdict, decide
from eval.metrics import accuracy, count_outside_labels, exact_match, macro_f1, normalize_answer

__all__ = [
    "EvalExample",
    "EvalTask",
    "GateThresholds",
    "GateVerdict",
    "TaskKind",
    "accuracy",
    "count_outside_labels",
    "decide",
    "eval_set_hash",
    "exact_match",
    "macro_f1",
    "normalize_answer",
]
