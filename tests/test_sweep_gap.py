"""The theory's answer to "what would reach a goal speed" (`sweep.gap`), against the formula."""

import pytest

from specdec_t5x import theory
from specdec_t5x.sweep import gap


def test_each_quantity_is_solved_back_from_the_formula():
  alpha, c, gamma, cost = 0.8, 0.1, 4, 1.3
  goal = float(theory.walltime_improvement_measured(alpha, gamma, c, cost))
  scoring = {gamma: cost}
  assert gap.alpha_needed(goal, c, scoring) == pytest.approx(alpha, abs=1e-9)
  assert gap.c_needed(goal, alpha, scoring) == pytest.approx(c, abs=1e-9)
  assert gap.scoring_needed(goal, alpha, c, [gamma]) == pytest.approx(cost, abs=1e-9)


def test_the_best_gamma_is_used_and_unreachable_goals_are_none():
  scoring = {1: 1.2, 4: 1.5, 8: 1.9}
  speed, gamma = gap.best_prediction(0.7, 0.05, scoring)
  assert speed == max(float(theory.walltime_improvement_measured(0.7, g, 0.05, s))
                      for g, s in scoring.items())
  assert gamma in scoring
  assert gap.alpha_needed(100.0, 0.05, scoring) is None
  assert gap.c_needed(5.0, 0.3, scoring) is None  # even a free draft: at most 1/(1-α)/cost
  assert gap.scoring_needed(5.0, 0.3, 0.05, [1, 4]) is None
  # Already there: the weakest value that reaches it is the interval's end.
  assert gap.c_needed(0.5, 0.7, scoring) == 1.0


def test_the_table_names_the_quantity_that_separates_a_cell():
  cells = [{'alpha_beta': 0.6, 'c': 0.05, 'gamma': g, 'scoring_cost': 1.0 + 0.1 * g,
            'speedup': 1.1, 'task': 'ende'} for g in (1, 2, 3, 4)]
  result = gap.task_gap(cells, 2.0)
  assert result['alpha_needed'] > 0.6 and result['c_needed'] is None
  table = gap.gap_markdown(lambda r: ('EnDe', 'large'), {('ende',): cells}, 2.0)
  row = table.splitlines()[-1]
  assert row.startswith('| EnDe | large | 1.10x |') and 'unreachable' in row
  assert ('α (the smallest change' in row) or ('scoring cost (the smallest change' in row)


def test_a_request_s_set_up_caps_the_speed_and_is_solved_back():
  alpha, c, gamma, cost = 0.8, 0.1, 4, 1.3
  request = gap.RequestCosts(steps=10.0, setup=4.0, draft_setup=1.0)
  goal = float(theory.walltime_improvement_per_request(alpha, gamma, c, cost, *request))
  assert goal < float(theory.walltime_improvement_measured(alpha, gamma, c, cost))
  scoring = {gamma: cost}
  assert gap.alpha_needed(goal, c, scoring, request) == pytest.approx(alpha, abs=1e-9)
  assert gap.setup_needed(goal, alpha, c, scoring, request) == pytest.approx(1.0)
  assert gap.setup_needed(goal + 0.1, alpha, c, scoring, request) < 1.0
  # However good the draft, (E + N) / (E + D) bounds the request: 14 / 5 here.
  result = gap.task_gap([{'alpha_beta': alpha, 'c': c, 'gamma': gamma, 'scoring_cost': cost,
                          'speedup': 1.0, 'batch': 1, 'setup_steps': 4.0,
                          'draft_setup_steps': 1.0,
                          'per_batch': {'autoregressive_tokens': [10, 10, 10]}}], 3.0)
  assert result['request'] == request and result['perfect_draft'] < 14.0 / 5.0
  assert result['alpha_needed'] is None and result['c_needed'] is None


def test_a_cell_whose_theory_already_reaches_the_goal_names_measured_over_theory():
  cells = [{'alpha_beta': 0.6, 'c': 0.05, 'gamma': g, 'scoring_cost': 1.0 + 0.1 * g,
            'speedup': 1.1, 'task': 'ende'} for g in (1, 2, 3, 4)]
  predicted = gap.task_gap(cells, 1.3)['predicted']
  assert predicted > 1.3
  row = gap.gap_markdown(lambda r: ('EnDe', 'large'), {('ende',): cells}, 1.3).splitlines()[-1]
  assert row.endswith(f'the theory reaches 1.3x; measured / theory is {1.1 / predicted:.2f} |')


def test_a_flat_scoring_cost_is_weighed_against_the_cost_where_it_reaches_the_goal():
  # A steep measured curve: its best γ is 1, but a flat cost just above γ = 1's would reach
  # the goal at a larger γ, where the measured cost is far higher.
  cells = [{'alpha_beta': 0.8, 'c': 0.02, 'gamma': g, 'scoring_cost': s, 'speedup': 1.0,
            'task': 'ende'} for g, s in ((1, 1.05), (4, 2.0))]
  result = gap.task_gap(cells, 1.9)
  assert result['gamma'] == 1 and result['scoring_needed'] > 1.05
  assert result['scoring_needed_gamma'] == 4 and result['scoring_cost_there'] == 2.0
  row = gap.gap_markdown(lambda r: ('EnDe', 'large'), {('ende',): cells}, 1.9).splitlines()[-1]
  assert f"{result['scoring_needed']:.2f} at γ = 4 (measured 2.00)" in row
  needed_share = 1.0 - result['scoring_needed'] / 2.0
  assert needed_share > 0.05 and 'scoring cost (the smallest change, 0%)' not in row
