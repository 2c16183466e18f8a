"""How a simulated rater decides, from the oracle's scores of what it is shown (pure Python; no
Django, so benchmarks and the critic's tests can draw judgments without a database).

Kinds: ``careful`` (follows the oracle, says tie when it cannot tell, both bad when both are
poor), ``noisy`` (Bradley–Terry choice with a temperature), ``left-biased`` (presses left 70 % of
the time), ``random``. ``annotation.simulation`` sends these decisions through the rating path.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np

from policy.ml.prefdata import CRITERIA

KINDS = ("careful", "noisy", "left-biased", "random")
TIE_BELOW = 0.02  # careful: oracle totals closer than this are "about the same"
BOTH_BAD_BELOW = 0.35  # careful: both totals under this are "both bad"
NOISE_TEMPERATURE = 0.08  # noisy: P(left) = sigmoid((s_left - s_right) / T)
LEFT_BIAS = 0.7


@dataclass
class SimulatedJudge:
    kind: str
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")

    def choice(self, left: float, right: float) -> tuple[str, int | None]:
        """(left / right / tie / both_bad, strength 1-3 or None) for two oracle totals."""
        r = self.rng.random()
        if self.kind == "random":
            return ("left", "right", "tie", "both_bad")[min(3, int(r * 4))], None
        if self.kind == "left-biased" and r < LEFT_BIAS:
            return "left", 2
        diff = left - right
        if self.kind == "noisy":
            p_left = 1.0 / (1.0 + math.exp(-diff / NOISE_TEMPERATURE))
            return ("left" if self.rng.random() < p_left else "right"), 2
        if abs(diff) < TIE_BELOW:
            return "tie", None
        if max(left, right) < BOTH_BAD_BELOW:
            return "both_bad", None
        strength = 1 if abs(diff) < 0.05 else 2 if abs(diff) < 0.15 else 3
        return ("left" if diff > 0 else "right"), strength

    def scores(self, totals: list[float]) -> list[dict[str, int]]:
        """Group scoring: 1-5 per criterion for each clip shown, from its oracle total."""
        out = []
        for position, total in enumerate(totals):
            base = 1 + 4 * total
            if self.kind == "random":
                out.append({c: self.rng.randint(1, 5) for c in CRITERIA})
                continue
            if self.kind == "left-biased" and position == 0:
                base += 1.5
            sd = 0.8 if self.kind == "noisy" else 0.2
            out.append({c: int(np.clip(round(base + self.rng.gauss(0, sd)), 1, 5))
                        for c in CRITERIA})
        return out
