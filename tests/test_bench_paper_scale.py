"""The paper-scale benchmark: its pieces, and the whole script on miniature shapes."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from specdec_t5x import paper, paths, theory
from specdec_t5x.bench import paper_scale, paper_scale_report, report


def _script():
  path = paths.repo_root() / 'scripts' / 'bench_paper_scale.py'
  spec = importlib.util.spec_from_file_location('bench_paper_scale', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_expected_iterations_matches_the_limit_and_edge_cases():
  # α = 1: every iteration emits γ+1 tokens, the last one cut short.
  assert paper_scale.expected_iterations(1.0, 3, 10) == pytest.approx(3.0)
  # α = 0: one token per iteration.
  assert paper_scale.expected_iterations(0.0, 5, 7) == pytest.approx(7.0)
  # Long requests: iterations ≈ T / E[tokens per iteration].
  per_iteration = theory.expected_tokens_per_iteration(0.7, 4)
  assert paper_scale.expected_iterations(0.7, 4, 4000) == pytest.approx(
      4000 / per_iteration, rel=2e-3)


def test_request_theory_tends_to_the_formula_and_pays_prefill():
  formula = theory.walltime_improvement_measured(0.75, 7, 0.1, 1.3)
  assert paper_scale.request_theory(0.75, 7, 0.1, 1.3, 100000, 0.0, 0.0) == pytest.approx(
      formula, rel=1e-3)
  short = paper_scale.request_theory(0.75, 7, 0.1, 1.3, 64, 0.0, 0.0)
  assert short < formula
  assert paper_scale.request_theory(0.75, 7, 0.1, 1.3, 64, 2.0, 3.0) < short


def test_drafts_map_the_papers_mq_to_smaller_shapes_only():
  assert paper_scale.draft_shape('t5_1_1_large', 'T5-small') == 't5_1_1_small'
  assert paper_scale.draft_shape('t5_1_1_large', 'T5-base') == 't5_1_1_base'
  assert paper_scale.draft_shape('t5_1_1_large', 'T5-large') is None
  assert paper_scale.draft_shape('t5_1_1_xxl', 'T5-large') == 't5_1_1_large'
  assert paper_scale.draft_shape('t5_1_1_small', 'T5-small') is None
  rows = paper_scale.table2_greedy_rows()
  assert len(rows) == sum(1 for row in paper.PAPER_TABLE2 if row[2] == 0.0) == 6


def test_loop_configs_cover_every_row_with_and_without_the_draft_and_the_optimal_gamma():
  configs = paper_scale.loop_configs('t5_1_1_large')
  # 6 rows without a draft step, plus one with for the 4 rows whose Mq is smaller.
  assert len(configs) == 10
  assert sum(c['draft'] is not None for c in configs) == 4
  curve = [1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7]
  configs = paper_scale.loop_configs('t5_1_1_large', {'t5_1_1_small': 0.1,
                                                      't5_1_1_base': 0.3}, curve)
  for config in (c for c in configs if c['gamma_choice'] == 'optimal'):
    c = {None: 0.0, 't5_1_1_small': 0.1, 't5_1_1_base': 0.3}[config['draft']]
    assert config['gamma'] == theory.optimal_gamma(config['alpha'], c, max_gamma=7,
                                                   scoring_cost=curve).gamma
  assert any(c['gamma_choice'] == 'optimal' for c in configs)


def test_quick_run_writes_the_report(tmp_path):
  # A subprocess: the script turns on JAX's persistent compilation cache for its whole process.
  env = dict(os.environ, JAX_PLATFORMS='cpu', **{paths.CACHE_ENV: str(tmp_path)})
  subprocess.run([sys.executable, str(paths.repo_root() / 'scripts' / 'bench_paper_scale.py'),
                  '--quick', '--targets', 'quick_small', 'quick_base', '--output-dir', 'out'],
                 cwd=tmp_path, env=env, check=True, capture_output=True, timeout=900)
  out = tmp_path / 'out'
  record = json.loads((out / 'paper_scale.json').read_text())
  assert report.absolute_paths(record) == []
  assert record['settings']['output_dir'] == '{cache}/out'
  assert [t['target'] for t in record['targets']] == ['quick_small', 'quick_base']
  base = record['targets'][1]
  assert len(base['costs']['scoring_curve']) == 8 and base['costs']['scoring_curve'][0] == 1.0
  assert set(base['costs']['drafts']) == {'quick_small'}
  for row in base['rows']:
    assert row['exact']  # greedy speculative output is the target's
    assert 0.0 <= row['alpha_realised'] <= 1.0
    assert row['theory'] == pytest.approx(theory.walltime_improvement_measured(
        row['alpha_realised'], row['gamma'], row['c'], row['scoring_cost']))
    assert (row['c'] == 0.0) == (row['draft'] is None)
  text = (out / 'paper_scale.md').read_text()
  assert 'Hardware:' in text and '## Target quick_base' in text
  assert (out / 'paper_scale.png').stat().st_size > 0
  check = paper_scale_report.done_check(base)
  assert check['rows'] == 6 + 2 and check['all_exact']  # 2 rows have Mq = T5-small


def test_help_names_the_modes(capsys):
  with pytest.raises(SystemExit):
    _script().main(['--help'])
  out = capsys.readouterr().out
  assert '--accelerator' in out and '--quick' in out and '--targets' in out


def test_device_random_params_have_the_shapes_scale_and_banned_eos():
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  from specdec_t5x import network  # noqa: PLC0415
  from specdec_t5x.bench import random_weights  # noqa: PLC0415

  module = network.Transformer(paper_scale.shape_config('quick_base', jnp.bfloat16))
  params = paper_scale.device_random_params(module, 8, 0, jnp.bfloat16)
  reference = random_weights.random_params(module, 1, 8, 0)
  assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(reference)
  for got, want in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(reference),
                       strict=True):
    assert got.shape == want.shape and got.dtype == jnp.bfloat16
  kernel = np.asarray(params['decoder']['logits_dense']['kernel'], np.float32)
  assert np.all(kernel[:, random_weights.EOS_ID] == 0)
  assert np.std(kernel) == pytest.approx(1 / np.sqrt(kernel.shape[0]), rel=0.1)
