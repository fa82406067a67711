"""The TPU projection: the paper's Table 2 against its own formula, and our scoring curve."""

import json

import pytest

from specdec_t5x import paper, sweep
from specdec_t5x.sweep import projection


def test_tpu_projection_reproduces_the_papers_formula():
  rows = sweep.tpu_projection(paper_scale_path=None)
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
  rows = sweep.tpu_projection(curve, paper_scale_path=None)
  # The paper's γ are 3..7: none fits a curve up to K=3, so no row gets a CPU column.
  assert not any('cpu_scoring_cost' in r for r in rows)
  long_curve = [1.0] + [1.0 + 0.1 * k for k in range(1, 9)]
  rows = sweep.tpu_projection(long_curve, paper_scale_path=None)
  assert rows[0]['cpu_scoring_cost'] == pytest.approx(long_curve[7])
  assert '| CPU scoring cost γ+1 |' in sweep.projection_markdown(rows)


def _paper_scale_file(tmp_path, curves):
  targets = [{'target': name, 'config': {'params': params},
              'costs': {'scoring_curve': curve}} for name, params, curve in curves]
  record = {'settings': {'dtype': 'float32'}, 'machine': {'jax_backend': 'cpu'},
            'targets': targets}
  path = tmp_path / 'paper_scale.json'
  path.write_text(json.dumps(record))
  return path


def test_paper_scale_curve_of_the_largest_shape_replaces_the_sweeps(tmp_path):
  large = [1.0] + [1.0 + 0.05 * k for k in range(1, 8)]  # K = 1..8
  small = [1.0] + [2.0] * 7
  path = _paper_scale_file(tmp_path, [('t5_1_1_small', 10, small), ('t5_1_1_large', 700, large)])
  assert projection.paper_scale_curve(path) == (large, 't5_1_1_large, float32, cpu')
  assert projection.paper_scale_curve(tmp_path / 'absent.json') is None
  sweep_curve = [1.0] + [3.0] * 8
  rows = sweep.tpu_projection(sweep_curve, paper_scale_path=path)
  first = rows[0]  # γ = 7: K = 8
  assert first['cpu_scoring_cost'] == pytest.approx(large[7])
  assert first['scoring_source'] == 't5_1_1_large, float32, cpu'
  text = sweep.projection_markdown(rows)
  assert '| Scoring cost γ+1 (t5_1_1_large, float32, cpu) |' in text
  assert 'largest paper-scale shape' in text
  # Without the file the sweep's curve and the original rendering are kept.
  rows = sweep.tpu_projection(sweep_curve, paper_scale_path=tmp_path / 'absent.json')
  assert rows[0]['cpu_scoring_cost'] == pytest.approx(3.0)
  assert '| CPU scoring cost γ+1 |' in sweep.projection_markdown(rows)
