"""Exceptions raised by the scheduler."""

from __future__ import annotations


class SolverRefused(Exception):
    """A fast path cannot solve this input exactly; ``solve(method="auto")`` falls back.

    Attributes
    ----------
    reason : str
        Why the path refused (e.g. ``"feeder limit couples the cars"``).
    """

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class InfeasibleProblem(ValueError):
    """The constraints cannot all hold (e.g. min-SoC charging alone exceeds the feeder limit)."""


class SolverFailed(RuntimeError):
    """An LP/MILP solver stopped without an optimal solution."""
