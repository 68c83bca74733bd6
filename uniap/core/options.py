"""Algorithm options of UniAP and the two presets that set them together.

The S2-UniSeg paper and its authors' released code describe UniAP differently; both are
options of one algorithm here.  ``preset="released"`` reproduces the released code and
``preset="paper"`` the paper's wording.  Every option can also be given on its own and then
overrides the preset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

DEFAULT_LEVELS: tuple[float, ...] = (0.8, 0.7, 0.6, 0.5, 0.4)

PRESETS: dict[str, dict[str, object]] = {
    "released": {"passes": "until_stable", "pooling": "sum", "vote_weight": 0.0},
    "paper": {"passes": "single", "pooling": "attention", "vote_weight": 0.4},
}
PASSES = ("until_stable", "single")
POOLINGS = ("sum", "attention")


@dataclass(frozen=True)
class Options:
    """Resolved, validated options of one UniAP run.

    Attributes
    ----------
    levels : tuple of float
        Strictly decreasing thresholds t_l in [-1, 1].
    passes : {"until_stable", "single"}
        Contraction passes per level.
    pooling : {"sum", "attention"}
        How a contracted node's feature v_k is pooled from its members.
    vote_weight : float
        w_s, the weight of the voting term; the cosine term gets w_f = 1 - w_s.
    temperature : float
        sigma, the attention temperature of ``pooling="attention"`` and the vote profiles.
    semantic : bool
        Also compute each level's semantic grouping (complete graph over its clusters).
    min_size : int
        Clusters with fewer cells are kept in label maps but are not reported as masks.
    """

    levels: tuple[float, ...] = DEFAULT_LEVELS
    passes: str = "until_stable"
    pooling: str = "sum"
    vote_weight: float = 0.0
    temperature: float = 0.07
    semantic: bool = False
    min_size: int = 4

    @property
    def feature_weight(self) -> float:
        """w_f = 1 - w_s, the weight of the cosine term."""
        return 1.0 - self.vote_weight

    @property
    def needs_profiles(self) -> bool:
        """Whether scores or pooling use the affinity profiles mu_k F^T (O(N) per node)."""
        return self.pooling == "attention" or self.vote_weight != 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "levels": list(self.levels),
            "passes": self.passes,
            "pooling": self.pooling,
            "vote_weight": self.vote_weight,
            "temperature": self.temperature,
            "semantic": self.semantic,
            "min_size": self.min_size,
        }


def check_levels(levels: Sequence[float] | float) -> tuple[float, ...]:
    """Return ``levels`` as a tuple of floats, or raise naming what is wrong."""
    if isinstance(levels, (str, bytes)):
        raise TypeError(
            f"levels must be a sequence of numbers such as (0.8, 0.6), got the string {levels!r}"
        )
    if isinstance(levels, (int, float)) and not isinstance(levels, bool):
        levels = (levels,)
    try:
        items = list(levels)  # type: ignore[arg-type]
        if any(isinstance(t, (str, bytes, bool)) for t in items):
            raise TypeError
        values = tuple(float(t) for t in items)
    except (TypeError, ValueError):
        raise TypeError(
            f"levels must be a sequence of numbers, got {levels!r}"
        ) from None
    if not values:
        raise ValueError("levels must hold at least one threshold, got an empty sequence")
    for t in values:
        if not math.isfinite(t) or not -1.0 <= t <= 1.0:
            raise ValueError(f"levels must lie in [-1, 1], got {t!r} in {list(values)}")
    for a, b in zip(values, values[1:]):
        if not b < a:
            raise ValueError(
                "levels must be strictly decreasing (coarser levels use lower thresholds), "
                f"got {list(values)}: {b!r} does not follow {a!r}"
            )
    return values


def _number(name: str, value: object) -> float:
    """``value`` as a float; a string, None or a bool is a ``TypeError`` naming the option."""
    if isinstance(value, (str, bytes, bool)) or value is None:
        raise TypeError(f"{name} must be a number, got {value!r}")
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None


def resolve_options(
    *,
    levels: Sequence[float] | float = DEFAULT_LEVELS,
    preset: str = "released",
    passes: str | None = None,
    pooling: str | None = None,
    vote_weight: float | None = None,
    temperature: float = 0.07,
    semantic: bool = False,
    min_size: int = 4,
) -> Options:
    """Apply ``preset``, then the options given explicitly, and validate the result."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    base = PRESETS[preset]
    passes = base["passes"] if passes is None else passes  # type: ignore[assignment]
    pooling = base["pooling"] if pooling is None else pooling  # type: ignore[assignment]
    vote_weight = base["vote_weight"] if vote_weight is None else vote_weight  # type: ignore[assignment]
    if passes not in PASSES:
        raise ValueError(f"passes must be one of {list(PASSES)}, got {passes!r}")
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {list(POOLINGS)}, got {pooling!r}")
    vote_weight = _number("vote_weight", vote_weight)
    if not 0.0 <= vote_weight <= 1.0:
        raise ValueError(f"vote_weight must lie in [0, 1], got {vote_weight!r}")
    temperature = _number("temperature", temperature)
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    if isinstance(min_size, bool) or not isinstance(min_size, (int,)) and not (
        hasattr(min_size, "__index__")
    ):
        raise TypeError(f"min_size must be an integer, got {min_size!r}")
    min_size = int(min_size)
    if min_size < 1:
        raise ValueError(f"min_size must be >= 1, got {min_size}")
    return Options(
        levels=check_levels(levels),
        passes=passes,  # type: ignore[arg-type]
        pooling=pooling,  # type: ignore[arg-type]
        vote_weight=vote_weight,
        temperature=temperature,
        semantic=bool(semantic),
        min_size=min_size,
    )
