"""Mixed precision: per-layer sensitivity, an exact integer program over bit-widths, and the resulting overrides."""

from lowbit.mixed.allocate import Allocation, Analysis, LayerChoice, allocate, analyze, solve_budget
from lowbit.mixed.budget import Budget
from lowbit.mixed.costs import weight_bytes
from lowbit.mixed.sensitivity import METRICS, ScoringTask, metric
from lowbit.mixed.solver import Problem, Solution, solve

__all__ = ["Budget", "Allocation", "Analysis", "LayerChoice", "allocate", "analyze", "solve_budget", "METRICS",
           "ScoringTask", "metric", "Problem", "Solution", "solve", "weight_bytes"]
