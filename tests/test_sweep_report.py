"""The reports read records only: best cells, Table 2 / Table 3 rows, on records of any age."""

import pytest
from sweep_miniature import MINIATURE_CONFIG

from specdec_t5x import sweep
from specdec_t5x.sweep import report

# The machine facts of records measured before bench.machine (no flax, no device list).
OLD_MACHINE = {'cpu_model': 'AMD EPYC', 'jax': '0.10.2', 'jax_backend': 'cpu', 'nproc': 2,
               'platform': 'Linux', 'python': '3.11.7'}


def _record(draft, temperature, gamma, speedup, alpha, scoring_cost=1.5):
  """A grid record as results/sweep.json holds them (per_batch without beta_count)."""
  return {
      'key': f'grid/ende/{draft}/T{temperature:g}/g{gamma}/b1', 'section': 'grid',
      'task': 'ende', 'draft': draft, 'temperature': temperature, 'gamma': gamma, 'batch': 1,
      'num_inputs': 3, 'speedup': speedup, 'speedup_q25': speedup - 0.1,
      'speedup_q75': speedup + 0.1, 'alpha_beta': alpha, 'alpha_acceptance': alpha - 0.02,
      'c': 0.05, 'scoring_cost': scoring_cost, 'theory_paper': 1.3, 'theory_measured': 1.0,
      'measured_over_theory_measured': speedup, 'greedy_mismatched_rows': 0,
      'tokens_per_iteration': 1.5, 'expected_tokens_per_iteration': 1 + alpha,
      'draft_params': 870_000, 'target_params': 12_000_000,
      'per_batch': {'beta_sum': [1.0], 'beta_weight': [2], 'iterations': [1], 'accepted': [1]},
      'command': 'scripts/sweep.py', 'date': f'2026-11-23T20:4{gamma}:00+00:00',
      'load_average_1min': 1.25, 'machine': OLD_MACHINE}


@pytest.fixture
def records():
  return [_record('large', 0.0, 1, 1.10, 0.60), _record('large', 0.0, 2, 1.30, 0.70),
          _record('small', 1.0, 1, 0.90, 0.30), _record('small', 1.0, 2, 0.80, 0.40)]


def test_best_cells_pick_the_fastest_gamma_and_the_theorys(records):
  config = sweep.load_config(MINIATURE_CONFIG)
  best = {b['draft']: b for b in sweep.best_cells(config, records)}
  assert best['large']['gamma'] == 2 and best['small']['gamma'] == 1
  assert best['large']['alpha_mean_over_gamma'] == pytest.approx(0.65)
  assert best['large']['gammas_measured'] == [1, 2]
  assert best['large']['theory_best_gamma'] in (1, 2)


def test_tables_render_records_of_the_old_layout(records):
  config = sweep.load_config(MINIATURE_CONFIG)
  table2 = report.table2_markdown(config, records)
  assert '| DDTP EnDe | large (0.9M) | 0 | 2 | 0.70 | 0.68 | 1.30x |' in table2
  assert '| EnDe / T5-large | 7 | 0.82 | 1.7x |' in table2  # the paper's row
  assert 'Machine: 2 CPU cores (AMD EPYC), jax 0.10.2 (cpu), fp32.' in table2
  assert 'Greedy exactness: 0 of 6 greedy speculative outputs differ' in table2
  table3 = report.table3_markdown(config, records)
  # α averaged over the γ cells; the paper's α of T5-large at T=0 is 0.82.
  assert '| DDTP EnDe | large (0.9M) | model | 0.65 | 0.82 | 1.30x (γ=2) | — |' in table3
