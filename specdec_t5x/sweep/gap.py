"""What would reach a goal speed: the theory's answer for each measured quantity, one at a time.

A cell's speed-up is predicted by `theory.walltime_improvement_per_request(α,
γ, c, scoring_cost(γ), N, E, D)`, best over γ: the decoder steps of
`walltime_improvement_measured` plus what a request of N tokens pays once (E
for the target's encoder pass and cache, D for the draft's; records without
them predict per step). Holding the other measured quantities, each function
here solves for the value of one that makes the best-over-γ prediction reach
`goal` (bisection: the prediction rises with α and falls with c, the scoring
cost and the set-up). None means no value reaches it (e.g. even a free draft,
c = 0, is not enough at the measured α).

`gap_markdown` applies this to each task's fastest T = 0 cell of a sweep: the
quantity whose required change is smallest (relative to what was measured)
is the one that separates the task from the goal.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from specdec_t5x import theory
from specdec_t5x.sweep.markdown import fmt

ALPHA_MAX = 0.999
SCORING_MAX = 20.0


class RequestCosts(NamedTuple):
  """A request's tokens N and its set-up costs E (target) and D (draft), in target steps."""
  steps: float
  setup: float
  draft_setup: float

  def scaled(self, factor: float) -> RequestCosts:
    return self._replace(setup=factor * self.setup, draft_setup=factor * self.draft_setup)


def best_prediction(alpha: float, c: float, scoring: Mapping[int, float],
                    request: RequestCosts | None = None) -> tuple[float, int]:
  """`(speed-up, γ)`: the theory's best over the γ of `scoring` (γ -> cost of γ+1 positions),
  per request when `request` is given, else per decoder step."""
  if request is None:
    predicted = {g: float(theory.walltime_improvement_measured(alpha, g, c, s))
                 for g, s in scoring.items()}
  else:
    predicted = {g: float(theory.walltime_improvement_per_request(alpha, g, c, s, *request))
                 for g, s in scoring.items()}
  gamma = max(predicted, key=predicted.get)
  return predicted[gamma], gamma


def _bisect(reaches: Callable[[float], bool], low: float, high: float,
            increasing: bool) -> float | None:
  """The boundary of `reaches` in [low, high]: the least (increasing) or largest value."""
  good, bad = (high, low) if increasing else (low, high)
  if not reaches(good):
    return None
  if reaches(bad):
    return bad
  for _ in range(60):
    middle = 0.5 * (good + bad)
    good, bad = (middle, bad) if reaches(middle) else (good, middle)
  return good


def alpha_needed(goal: float, c: float, scoring: Mapping[int, float],
                 request: RequestCosts | None = None) -> float | None:
  """The least α whose best prediction reaches `goal`, at the measured c and scoring costs."""
  return _bisect(lambda a: best_prediction(a, c, scoring, request)[0] >= goal, 0.0, ALPHA_MAX,
                 True)


def c_needed(goal: float, alpha: float, scoring: Mapping[int, float],
             request: RequestCosts | None = None) -> float | None:
  """The largest c that still reaches `goal`, at the measured α and scoring costs."""
  return _bisect(lambda c: best_prediction(alpha, c, scoring, request)[0] >= goal, 0.0, 1.0,
                 False)


def scoring_needed(goal: float, alpha: float, c: float, gammas: Sequence[int],
                   request: RequestCosts | None = None) -> float | None:
  """The largest scoring cost, the same for every γ, that reaches `goal` at the measured α, c."""
  return _bisect(lambda s: best_prediction(alpha, c, {g: s for g in gammas}, request)[0] >= goal,
                 1.0, SCORING_MAX, False)


def setup_needed(goal: float, alpha: float, c: float, scoring: Mapping[int, float],
                 request: RequestCosts | None) -> float | None:
  """The largest share of the measured set-up (E and D scaled together) that reaches `goal`."""
  if request is None:
    return None
  return _bisect(lambda f: best_prediction(alpha, c, scoring, request.scaled(f))[0] >= goal,
                 0.0, 1.0, False)


def group_estimates(cells: Sequence[Mapping[str, Any]]
                    ) -> tuple[float, float, dict[int, float], RequestCosts | None]:
  """`(α, c, scoring, request)` of one group of grid cells (one task, draft, temperature, batch).

  α is the mean β over the cells, c their median, `scoring` the measured cost
  of γ+1 positions by γ, `request` the median tokens per input and set-up
  costs (None for records without them): what the theory's γ* and the gaps
  are computed from.
  """
  alpha = float(np.mean([r['alpha_beta'] for r in cells]))
  c = float(np.median([r['c'] for r in cells]))
  request = None
  if all('setup_steps' in r for r in cells):
    request = RequestCosts(
        float(np.median(cells[0]['per_batch']['autoregressive_tokens'])) / cells[0]['batch'],
        float(np.median([r['setup_steps'] for r in cells])),
        float(np.median([r['draft_setup_steps'] for r in cells])))
  return alpha, c, {r['gamma']: r['scoring_cost'] for r in cells}, request


def task_gap(cells: Sequence[Mapping[str, Any]], goal: float) -> dict[str, Any]:
  """The gap to `goal` of one (task, draft, temperature) group of grid cells (`group_estimates`)."""
  alpha, c, scoring, request = group_estimates(cells)
  predicted, gamma = best_prediction(alpha, c, scoring, request)
  needed = scoring_needed(goal, alpha, c, sorted(scoring), request)
  # A flat cost may reach the goal at a larger γ than the measured curve's best, where the
  # measured cost is higher: the change it asks for is against the cost at that γ.
  needed_gamma = (gamma if needed is None
                  else best_prediction(alpha, c, dict.fromkeys(scoring, needed), request)[1])
  return {'alpha': alpha, 'c': c, 'gamma': gamma, 'scoring_cost': scoring[gamma],
          'request': request, 'predicted': predicted,
          'measured': max(r['speedup'] for r in cells),
          'alpha_needed': alpha_needed(goal, c, scoring, request),
          'c_needed': c_needed(goal, alpha, scoring, request),
          'scoring_needed': needed, 'scoring_needed_gamma': needed_gamma,
          'scoring_cost_there': scoring[needed_gamma],
          'setup_needed': setup_needed(goal, alpha, c, scoring, request),
          'perfect_draft': best_prediction(ALPHA_MAX, c, scoring, request)[0]}


def _separating(gap: Mapping[str, Any], goal: float) -> str:
  """Which single change is smallest, relative to the measured value.

  Where the theory already reaches `goal`, none is: what separates the measured speed from it
  is the loop running below its parts (measured / theory).
  """
  if gap['predicted'] >= goal:
    return (f'none of the four: the theory reaches {goal:g}x; measured / theory is '
            f'{gap["measured"] / gap["predicted"]:.2f}')
  changes = {}
  if gap['alpha_needed'] is not None:
    # α is bounded by 1: measure its distance as the share of the way from α to 1.
    changes['α'] = (gap['alpha_needed'] - gap['alpha']) / max(1e-9, 1.0 - gap['alpha'])
  if gap['c_needed'] is not None and gap['c'] > 0:
    changes['c'] = 1.0 - gap['c_needed'] / gap['c']
  if gap['scoring_needed'] is not None:
    changes['scoring cost'] = 1.0 - gap['scoring_needed'] / gap['scoring_cost_there']
  if gap.get('setup_needed') is not None:
    changes['set-up'] = 1.0 - gap['setup_needed']
  if not changes:
    return 'no single quantity: several must move'
  name = min(changes, key=changes.get)
  share = max(changes[name], 0.0)
  return f'{name} (the smallest change, {"<1" if share < 0.005 else f"{100 * share:.0f}"}%)'


def _scoring_needed_cell(gap: Mapping[str, Any], never: str) -> str:
  """The flat scoring cost that reaches the goal, with the γ it does so at where that differs."""
  if gap['scoring_needed'] is None:
    return never
  text = fmt(gap['scoring_needed'])
  where = gap['scoring_needed_gamma']
  if where != gap['gamma']:
    text += f" at γ = {where} (measured {fmt(gap['scoring_cost_there'])})"
  return text


def _setup_columns(gap: Mapping[str, Any], never: str) -> list[str]:
  """The set-up E + D, the set-up that reaches the goal, and the prediction of a perfect draft."""
  request = gap['request']
  if request is None:
    return ['—'] * 3
  total = request.setup + request.draft_setup
  needed = gap['setup_needed']
  return [f'{total:.1f}', f'{needed * total:.1f}' if needed is not None else never,
          f"{fmt(gap['perfect_draft'], 2, 'x')} (N = {request.steps:.0f})"]


def gap_markdown(label_of: Callable[[Mapping[str, Any]], tuple[str, str]],
                 groups: Mapping[tuple, Sequence[Mapping[str, Any]]], goal: float) -> str:
  """A table: per group (its fastest at T = 0 per task, given), the values that reach `goal`.

  `label_of(cell)` returns `(task label, draft label)`.
  """
  head = ('Task', 'Draft', 'Measured speed', 'Theory', 'γ', 'α', f'α for {goal:g}x',
          'c', f'c for {goal:g}x', 'scoring cost γ+1', f'scoring cost for {goal:g}x',
          'set-up E + D (steps)', f'set-up for {goal:g}x', 'α = 1 (steps: N)',
          'What separates it')
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for cells in groups.values():
    gap = task_gap(cells, goal)
    task, draft = label_of(cells[0])
    never = 'unreachable'
    lines.append('| ' + ' | '.join([
        task, draft, fmt(gap['measured'], 2, 'x'), fmt(gap['predicted'], 2, 'x'),
        str(gap['gamma']), fmt(gap['alpha']),
        fmt(gap['alpha_needed']) if gap['alpha_needed'] is not None else never,
        fmt(gap['c'], 3), fmt(gap['c_needed'], 3) if gap['c_needed'] is not None else never,
        fmt(gap['scoring_cost']),
        _scoring_needed_cell(gap, never),
        *_setup_columns(gap, never), _separating(gap, goal)]) + ' |')
  return '\n'.join(lines)


__all__ = ['RequestCosts', 'best_prediction', 'alpha_needed', 'c_needed', 'scoring_needed',
           'setup_needed', 'group_estimates', 'task_gap', 'gap_markdown']
