"""What `gamma='auto'` knows before a request starts: iteration costs per γ, and a prior α.

A `CostProfile` is measured on the user's own hardware by
`specdec_t5x.calibration` (or built from the paper's cost model with
`CostProfile.from_theory`), saved as JSON and checked against the call it is
used in (`check_fits`). Besides the costs it may hold the acceptance rate the
calibration observed for the same models: a request that starts from it
(`prior_settings`) decides its first γ from a measurement rather than from
the bare prior α = 0.5, which at batch 16 on the CPU family made the first
request of a stream speculate for 1-2 iterations, pay the draft's start and
lose 3-4% to autoregressive decoding (sweep of 2026-12-03).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

PROFILE_FORMAT = 'specdec_t5x.gamma_profile.v1'


def below_one(alpha: float) -> float:
  """`alpha` as a prior make_policy takes (< 1; a draft that always agreed measures 1)."""
  return min(float(alpha), float(np.nextafter(np.float32(1.0), np.float32(0.0))))


@dataclasses.dataclass(frozen=True)
class CostProfile:
  """What one loop iteration costs at each γ, relative to one at γ = 0.

  Attributes:
    iteration_cost: `[max_gamma + 1]`; element γ is an iteration that drafts
      γ tokens and scores γ+1 positions, over a plain target step (element 0
      is 1). It folds in γ·c, the scoring cost of γ+1 positions and the
      loop's own work.
    key: what the profile was measured for (`calibration.profile_key`), or
      None for a profile given by hand; checked against the call it is used in.
    details: free-form facts about the measurement (date, machine, rounds).
    start_cost: what a request pays once, in plain steps, when it first
      speculates, beyond that iteration's cost: the draft's encoder and
      set-up.
    alpha: the acceptance rate (mean β) measured with these models, or None
      if unknown; requests start from it (`prior_settings`).
    alpha_positions: how many verified positions `alpha` pools.
  """

  iteration_cost: tuple[float, ...]
  key: str | None = None
  details: dict[str, Any] = dataclasses.field(default_factory=dict)
  start_cost: float = 0.0
  alpha: float | None = None
  alpha_positions: float = 0.0

  def __post_init__(self):
    costs = tuple(float(x) for x in self.iteration_cost)
    if len(costs) < 2:
      raise ValueError('a cost profile needs iteration costs for γ = 0 and at least γ = 1, got '
                       f'{len(costs)} value(s)')
    if not all(math.isfinite(x) and x > 0 for x in costs):
      raise ValueError(f'iteration costs must be finite and > 0, got {costs}')
    if not (math.isfinite(self.start_cost) and self.start_cost >= 0):
      raise ValueError(f'start_cost must be finite and >= 0, got {self.start_cost!r}')
    if self.alpha is not None and not 0.0 <= self.alpha <= 1.0:
      raise ValueError(f'alpha must be None or in [0, 1], got {self.alpha!r}')
    if not (math.isfinite(self.alpha_positions) and self.alpha_positions >= 0):
      raise ValueError(f'alpha_positions must be finite and >= 0, got {self.alpha_positions!r}')
    object.__setattr__(self, 'iteration_cost', costs)
    object.__setattr__(self, 'start_cost', float(self.start_cost))
    object.__setattr__(self, 'alpha', None if self.alpha is None else float(self.alpha))
    object.__setattr__(self, 'alpha_positions', float(self.alpha_positions))

  @property
  def max_gamma(self) -> int:
    return len(self.iteration_cost) - 1

  @classmethod
  def from_theory(cls, c: float, scoring_cost: Sequence[float]) -> CostProfile:
    """The paper's cost model: cost(γ) = γ·c + scoring_cost[γ] (element 0 is K = 1, so 1).

    Args:
      c: one draft token over one target step.
      scoring_cost: one target call on K = 1, 2, ... positions over one on
        a single position (`results/scoring_cost.json`'s `ratio_median`).
    """
    if not math.isfinite(c) or c < 0:
      raise ValueError(f'c must be finite and >= 0, got {c!r}')
    scoring = [float(s) / float(scoring_cost[0]) for s in scoring_cost]
    return cls(tuple(g * c + s for g, s in enumerate(scoring)),
               details={'from_theory': {'c': c, 'scoring_cost': list(scoring_cost)}})

  def check_fits(self, max_gamma: int, key: str) -> None:
    """Raises a ValueError unless the profile covers γ ≤ `max_gamma` of the models in `key`."""
    if self.max_gamma < max_gamma:
      raise ValueError(f'the cost profile covers γ ≤ {self.max_gamma} but max_gamma is '
                       f'{max_gamma}: measure or give iteration costs for γ = 0..{max_gamma}')
    if self.key is not None and self.key != key:
      raise ValueError(
          f'the cost profile was measured for other models or shapes ({self.key}) than this '
          f'call ({key}); calibrate again (specdec_t5x.calibration.calibrate) or give a '
          'profile without a key')

  def to_json(self) -> dict[str, Any]:
    return {'format': PROFILE_FORMAT, 'iteration_cost': list(self.iteration_cost),
            'start_cost': self.start_cost, 'alpha': self.alpha,
            'alpha_positions': self.alpha_positions, 'key': self.key, 'details': self.details}

  def save(self, path: str | os.PathLike) -> None:
    pathlib.Path(path).write_text(json.dumps(self.to_json(), indent=1) + '\n')

  @classmethod
  def load(cls, path: str | os.PathLike) -> CostProfile:
    """Reads a profile written by `save`; a clear error for anything else."""
    path = pathlib.Path(path)
    try:
      record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
      raise ValueError(f'cannot read the cost profile {path}: {err}') from err
    if not isinstance(record, dict) or record.get('format') != PROFILE_FORMAT:
      raise ValueError(f'{path} is not a cost profile of specdec_t5x (format {PROFILE_FORMAT})')
    # Older files have no start_cost or alpha: none was measured.
    return cls(tuple(record['iteration_cost']), key=record.get('key'),
               details=record.get('details') or {},
               start_cost=record.get('start_cost', 0.0), alpha=record.get('alpha'),
               alpha_positions=record.get('alpha_positions', 0.0))


def prior_settings(profile: CostProfile, settings: Mapping[str, Any], memory: float,
                   ) -> dict[str, Any]:
  """`settings` (of `adaptive.make_policy`) with the prior α taken from the profile.

  A prior the caller gave (`alpha_prior` in `settings`, e.g. from
  `adaptive.carry_alpha`) is kept. Otherwise the profile's measured `alpha`
  becomes the prior, worth its verified positions up to `memory` (the most a
  running estimate ever weighs) unless `settings` give `prior_weight`. A
  profile without one leaves `settings` as they are (the default prior).
  """
  if 'alpha_prior' in settings or profile.alpha is None or not profile.alpha_positions:
    return dict(settings)
  weight = settings.get('prior_weight',
                        min(profile.alpha_positions, float(settings.get('memory', memory))))
  return {**settings, 'alpha_prior': below_one(profile.alpha), 'prior_weight': weight}
