"""How weak labels become training samples: an LCZ raster's band and coding, the hygiene rules, the validation blocks.

Kept apart from the modules that apply them (lczmap.train.raster_labels, lczmap.train.trainer) so that the
command line can show the defaults without loading the readers or Keras.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..errors import OptionError

CODINGS = ("auto", "lcz", "wrf")
DEFAULT_MIN_AGREEMENT = 5  # of the 9 cells of a 3 x 3 window, the cell included: a majority
DEFAULT_MAX_PER_CLASS = 1000
# Validation blocks at least this wide: a 48-pixel patch spans 480 m, so patches of cells 2 km apart share no pixel
# and hardly any neighbourhood, and validation is not flattered by near-copies of training patches.
MIN_BLOCK_KM = 2.0


@dataclass(frozen=True)
class LabelRules:
    """How an LCZ raster becomes training labels: which band, which coding, and the hygiene rules.

    `min_probability` is in percent (the global map's classProbability); a band of fractions 0-1 is read
    as percent. `min_agreement` None means DEFAULT_MIN_AGREEMENT without a probability threshold and off
    with one; 0 switches it off. `max_per_class` 0 keeps every cell. `soft`: each cell's target is the class
    shares of its 3 x 3 neighbourhood (its class the most frequent one) instead of the map's one class.
    """

    band: str | None = None
    codes: str = "auto"
    min_probability: float | None = None
    min_agreement: int | None = None
    max_per_class: int = DEFAULT_MAX_PER_CLASS
    soft: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.codes not in CODINGS:
            raise OptionError(f"--reference-codes {self.codes}: must be one of {', '.join(CODINGS)}")
        if self.min_probability is not None and not 0 <= self.min_probability <= 100:
            raise OptionError(f"--min-probability {self.min_probability:g}: a percentage from 0 to 100")
        if self.min_agreement is not None and not 0 <= self.min_agreement <= 9:
            raise OptionError(f"--min-agreement {self.min_agreement}: a number of cells of the 3 x 3 window, 0-9")
        if self.max_per_class < 0:
            raise OptionError(f"--max-per-class {self.max_per_class}: must be 0 (no cap) or more")

    @property
    def agreement(self) -> int:
        """Cells of the 3 x 3 window (the cell included) that must hold the cell's class; 0: not checked."""
        if self.min_agreement is not None:
            return self.min_agreement
        return 0 if self.min_probability is not None else DEFAULT_MIN_AGREEMENT

    def describe(self) -> dict[str, Any]:
        return {**asdict(self), "min_agreement": self.agreement}
