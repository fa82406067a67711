"""The TPU projection: the paper's Table 2 against its own formula, and our scoring curve."""

import pytest

from specdec_t5x import paper, sweep


def test_tpu_projection_reproduces_the_papers_formula():
  rows = sweep.tpu_projection()
  first = rows[0]  # EnDe, T5-small, T=0, γ=7, α=0.75, c=0.02, 3.4x
  tokens = (1 - 0.75 ** 8) / 0.25
  assert first['theory_paper'] == pytest.approx(tokens / (7 * 0.02 + 1))
  assert first['implied_scoring_cost'] == pytest.approx(tokens / 3.4 - 7 * 0.02)
  assert len(rows) == len(paper.PAPER_TABLE2)


def test_scoring_curve_needs_every_gamma_and_feeds_the_projection():
  cell = lambda gamma, cost: {'section': 'grid', 'batch': 1, 'gamma': gamma,
                              'scoring_cost': cost}
  assert sweep.scoring_curve([cell(1, 1.2), cell(3, 1.6)]) is None  # γ=2 missing
  curve = sweep.scoring_curve([cell(1, 1.2), cell(1, 1.4), cell(2, 1.5)])
  assert curve == pytest.approx([1.0, 1.3, 1.5])
  rows = sweep.tpu_projection(curve)
  # The paper's γ are 3..7: none fits a curve up to K=3, so no row gets a CPU column.
  assert not any('cpu_scoring_cost' in r for r in rows)
  long_curve = [1.0] + [1.0 + 0.1 * k for k in range(1, 9)]
  rows = sweep.tpu_projection(long_curve)
  assert rows[0]['cpu_scoring_cost'] == pytest.approx(long_curve[7])
  assert '| CPU scoring cost γ+1 |' in sweep.projection_markdown(rows)
