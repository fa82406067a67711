"""The sweep end to end on configs/sweep_miniature.json, with tiny random checkpoints.

The miniature config's models are replaced by random T5X checkpoints written to a
temporary directory (a target, a perturbed copy of it as a good draft, a smaller
random model as a poor one) and its task by synthetic inputs, so the test needs
neither the trained family nor the data. One module-scoped run is interrupted twice
(a cell budget, then an exception from the record callback, after a kill left half
a line in the store) and resumed; every test reads its results.
"""

import json
import math
import pathlib
import re

import jax
import numpy as np
import pytest

from specdec_t5x import checkpoints, network, paths, sweeps

MINIATURE_CONFIG = paths.repo_root() / 'configs' / 'sweep_miniature.json'
TARGET_PRESET = 'test_tiny'
# A draft that shares nothing with the target but its vocabulary: α near chance.
SMALL_OVERRIDES = dict(emb_dim=16, num_heads=1, num_encoder_layers=1, num_decoder_layers=1,
                       head_dim=16, mlp_dim=32)
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def random_params(config: network.T5Config, seed: int) -> dict:
  """Weights ~ N(0, 1/fan_in), norm scales 1, drawn with NumPy: no XLA compilation."""
  tokens = np.ones((1, 4), np.int32)
  shapes = jax.eval_shape(lambda: network.Transformer(config).init(
      jax.random.PRNGKey(0), tokens, tokens, tokens, enable_dropout=False))['params']
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    if path[-1].key == 'scale':
      return np.ones(leaf.shape, np.float32)
    return (rng.standard_normal(leaf.shape) / np.sqrt(leaf.shape[0])).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def perturbed(params: dict, scale: float, seed: int) -> dict:
  """`params` plus noise of relative size `scale`: a draft with 0 < α < 1."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda x: (x + scale * x.std() * rng.standard_normal(x.shape)).astype(np.float32), params)


def _write_models(root: pathlib.Path) -> dict:
  """Random checkpoints for the miniature config's models; returns their `models` entries."""
  target = random_params(network.config_from_preset(TARGET_PRESET), seed=0)
  small_config = network.config_from_preset(TARGET_PRESET, **SMALL_OVERRIDES)
  params = {'target': target, 'large': perturbed(target, 0.02, seed=1),
            'small': random_params(small_config, seed=2)}
  entries = {}
  for name, tree in params.items():
    checkpoints.save_t5x_checkpoint(tree, root / name, step=1)
    entries[name] = {'checkpoint': str(root / name), 'preset': TARGET_PRESET}
  entries['small']['overrides'] = SMALL_OVERRIDES
  return entries


def miniature_config_dict(model_root: pathlib.Path) -> dict:
  raw = json.loads(MINIATURE_CONFIG.read_text())
  models = _write_models(model_root)
  assert set(raw['models']) == set(models), 'the miniature config names other models'
  raw['models'] = models
  vocab = network.config_from_preset(TARGET_PRESET).vocab_size
  for task in raw['tasks'].values():
    for key in ('seqio_task', 'split'):
      task.pop(key, None)
    task['synthetic'] = {'length': 10, 'vocab_size': vocab}
  return raw


@pytest.fixture(scope='module')
def sweep_run(tmp_path_factory):
  """Runs the miniature sweep with two interruptions; returns what each stage saw."""
  root = tmp_path_factory.mktemp('sweep')
  config = sweeps.config_from_dict(miniature_config_dict(root / 'models'), config_dir=root)
  store = sweeps.CellStore(root / 'cells.jsonl')
  context = sweeps.SweepContext(config)
  all_keys = [item.key for item in sweeps.plan(config, store)]

  # 1. A time-boxed run stops after two cells.
  first = sweeps.run_sweep(config, store, max_new=2, progress=False, context=context,
                           command='test run 1')
  after_first = store.read()[0]
  # 2. A kill in the middle of an append leaves half a line.
  with open(store.path, 'a', encoding='utf-8') as file:
    file.write('{"key": "grid/half-written')

  # 3. A crash (an exception after the next record is stored).
  class Crash(Exception):
    pass

  def crash(record):
    raise Crash(record['key'])

  with pytest.raises(Crash):
    sweeps.run_sweep(config, store, progress=False, context=context, on_record=crash,
                     command='test run 2')
  after_crash = store.read()[0]
  # 4. Resume to the end, then a rerun that must measure nothing.
  resumed = sweeps.run_sweep(config, store, progress=False, context=context,
                             command='test run 3')
  rerun = sweeps.run_sweep(config, store, progress=False, context=context,
                           command='test run 4')
  written = sweeps.write_report(config, store, root / 'results', skipped=resumed.skipped)
  return dict(config=config, store=store, root=root, all_keys=all_keys, first=first,
              after_first=after_first, after_crash=after_crash, resumed=resumed, rerun=rerun,
              written=written)


def test_resume_keeps_finished_cells_and_measures_each_once(sweep_run):
  records, damaged = sweep_run['store'].read()
  keys = [record['key'] for record in records]
  assert len(sweep_run['first'].measured) == 2
  assert len(sweep_run['after_first']) == 2
  assert len(sweep_run['after_crash']) == 3  # the crashing cell was stored first
  assert damaged == 1  # the half-written line, skipped and closed off
  assert sorted(keys) == sorted(sweep_run['all_keys'])
  assert len(keys) == len(set(keys)), 'a cell was measured twice'
  # The resumed runs appended; the records written before the interruptions are unchanged.
  assert records[:3] == sweep_run['after_crash']
  assert sweep_run['resumed'].already_done == 3
  assert sweep_run['rerun'].measured == [] and not sweep_run['rerun'].skipped


def test_records_hold_sane_figures(sweep_run):
  config = sweep_run['config']
  records = sweeps.current_records(config, sweep_run['store'])
  assert len(records) == len(sweeps.enumerate_cells(config))
  for r in records:
    assert r['speedup'] > 0 and math.isfinite(r['speedup']), r['key']
    assert 0.0 <= r['alpha_beta'] <= 1.0 and 0.0 <= r['alpha_acceptance'] <= 1.0
    assert r['c'] > 0 and r['scoring_cost'] > 0 and r['target_step_ms'] > 0
    assert 1.0 <= r['tokens_per_iteration'] <= r['gamma'] + 1
    assert r['theory_measured'] == pytest.approx(
        r['expected_tokens_per_iteration'] / (r['gamma'] * r['c'] + r['scoring_cost']))
    assert len(r['per_batch']['speculative_s']) == r['num_inputs'] // r['batch']
    if r['temperature'] == 0.0:
      # Greedy speculative output must equal the autoregressive output token for token.
      assert r['greedy_mismatched_rows'] == 0, r['key']
  # Greedy: the perturbed copy of the target is a far better draft than an unrelated model.
  alpha = lambda draft: np.mean([r['alpha_beta'] for r in records if r['draft'] == draft
                                 and r['section'] == 'grid' and r['temperature'] == 0.0])
  assert alpha('large') > alpha('small') + 0.3


def test_peer_compares_outputs_and_times(sweep_run):
  peers = sweeps.current_peer_records(sweep_run['config'], sweep_run['store'])
  assert len(peers) == 1
  peer = peers[0]
  grid = sweeps.current_records(sweep_run['config'], sweep_run['store'])
  assert peer['gamma'] == sweeps.best_gamma(grid, 'ende', 'large')
  ours = peer['agreement']['ours_speculative_vs_ours_autoregressive']
  assert ours['identical'] == ours['of'] == 2
  assert peer['hf_best_over_ours_speculative'] > 0
  assert set(peer['median_ms']) == {'ours_speculative', 'ours_autoregressive', 'hf_greedy',
                                    'hf_assisted/default', 'hf_assisted/constant-our-gamma'}


def _markdown_tables(text: str) -> list[list[list[str]]]:
  tables, current = [], []
  for line in text.splitlines() + ['']:
    if line.startswith('|'):
      current.append([cell.strip() for cell in line.strip().strip('|').split('|')])
    elif current:
      tables.append(current)
      current = []
  return tables


def test_report_files_and_tables_are_well_formed(sweep_run):
  results = sweep_run['root'] / 'results'
  names = {path.name for path in sweep_run['written']}
  assert names == {'table2.md', 'table3.md', 'peer_hf.md', 'projection_tpu.md', 'sweep.json',
                   'speedup_vs_gamma.png', 'alpha.png', 'throughput.png'}
  for png in ('speedup_vs_gamma.png', 'alpha.png', 'throughput.png'):
    data = (results / png).read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000, png

  tables = _markdown_tables((results / 'table2.md').read_text())
  table2 = tables[0]
  head, separator, rows = table2[0], table2[1], table2[2:]
  assert head[:6] == ['Task', 'Mq', 'Temp', 'γ', 'α (β)', 'α (accept.)']
  assert {'Speed', 'Theory (paper formula)', 'Theory (measured scoring)', 'Measured / theory',
          'Paper speed'} <= set(head)
  assert all(re.fullmatch(r'-+', cell) for cell in separator)
  assert len(rows) == 4  # 2 model drafts × 2 temperatures, one best γ each
  for row in rows:
    assert len(row) == len(head)
    assert int(row[3]) in (1, 2)
    assert re.fullmatch(r'\d+\.\d\dx', row[head.index('Speed')])
  paper = {(row[1].split()[0], row[2]): row[head.index('Paper speed')] for row in rows}
  assert paper[('small', '0')] == '3.4x' and paper[('large', '1')] == '1.4x'
  throughput = tables[1]
  assert [row[4] for row in throughput[2:]] == ['1', '2']

  table3 = _markdown_tables((results / 'table3.md').read_text())[0]
  assert table3[0][:4] == ['Task', 'Draft', 'Kind', 'α T=0']
  assert len(table3) == 2 + 2

  summary = json.loads((results / 'sweep.json').read_text())
  assert len(summary['cells']) == len(sweeps.enumerate_cells(sweep_run['config']))
  assert summary['store_damaged_lines'] == 1
  assert len(summary['projection_tpu']) == len(sweeps.PAPER_TABLE2)
  assert 'test run 1' in summary['commands'] and 'test run 3' in summary['commands']
  projection = (results / 'projection_tpu.md').read_text()
  assert _markdown_tables(projection)[0][2][:2] == ['EnDe', 'T5-small']


def test_changed_config_marks_cells_stale(sweep_run, tmp_path):
  raw = json.loads(json.dumps(sweep_run['config'].raw))
  raw['tasks']['ende']['max_decode_len'] += 1
  changed = sweeps.config_from_dict(raw, config_dir=tmp_path)
  statuses = {item.key: item.status for item in sweeps.plan(changed, sweep_run['store'])}
  assert set(statuses.values()) == {'stale'}


def test_cli_dry_run_lists_cells_and_help_explains_options(sweep_run, tmp_path, capsys):
  import importlib.util
  spec = importlib.util.spec_from_file_location('sweep_cli',
                                                paths.repo_root() / 'scripts' / 'sweep.py')
  cli = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(cli)
  config_path = tmp_path / 'config.json'
  config_path.write_text(json.dumps(sweep_run['config'].raw))
  assert cli.main(['--config', str(config_path), '--store', str(sweep_run['store'].path),
                   '--dry-run']) == 0
  out = capsys.readouterr().out
  assert f"{len(sweep_run['all_keys'])} cells: {len(sweep_run['all_keys'])} done" in out
  assert 'done   grid/ende/small/T0/g1/b1' in out
  with pytest.raises(SystemExit) as exit_info:
    cli.parse_args(['--help'])
  assert exit_info.value.code == 0
  help_text = capsys.readouterr().out
  for option in ('--config', '--output-dir', '--store', '--sections', '--only', '--max-cells',
                 '--dry-run', '--report-only', '--no-report', '--no-progress'):
    assert option in help_text


@pytest.mark.parametrize('mutate, message', [
    (lambda raw: raw.pop('target'), 'missing'),
    (lambda raw: raw['grid'].update(gammas=[0]), 'gammas'),
    (lambda raw: raw['grid'].update(num_inputs=3, batch_sizes=[2]), 'multiple'),
    (lambda raw: raw['drafts']['small'].update(kind='telepathy'), 'no drafter builder'),
    (lambda raw: raw['grid'].update(drafts=['nope']), 'unknown draft'),
    (lambda raw: raw.update(colour='blue'), 'unknown keys'),
    (lambda raw: raw['peer_hf'].update(draft='small', gamma=0), 'gamma'),
])
def test_bad_config_raises_a_clear_error(mutate, message):
  raw = json.loads(MINIATURE_CONFIG.read_text())
  mutate(raw)
  with pytest.raises(ValueError, match=message):
    sweeps.config_from_dict(raw)


def test_shipped_configs_load_and_plan():
  for name in ('sweep_default.json', 'sweep_miniature.json', 'sweep_paper.json'):
    config = sweeps.load_config(paths.repo_root() / 'configs' / name)
    assert sweeps.enumerate_cells(config)
  default = sweeps.load_config(paths.repo_root() / 'configs' / 'sweep_default.json')
  grid = [c for c in sweeps.enumerate_cells(default) if c.section == 'grid']
  assert {c.gamma for c in grid} == set(range(1, 9)) and {c.temperature for c in grid} == {0, 1}
  assert {c.batch for c in sweeps.enumerate_cells(default, ('throughput',))} == {1, 4, 8, 16}


def test_tpu_projection_reproduces_the_papers_formula():
  rows = sweeps.tpu_projection()
  first = rows[0]  # EnDe, T5-small, T=0, γ=7, α=0.75, c=0.02, 3.4x
  tokens = (1 - 0.75 ** 8) / 0.25
  assert first['theory_paper'] == pytest.approx(tokens / (7 * 0.02 + 1))
  assert first['implied_scoring_cost'] == pytest.approx(tokens / 3.4 - 7 * 0.02)


def test_a_cheap_draft_plugs_in_through_its_builder(sweep_run, tmp_path):
  ngram_drafters = pytest.importorskip('specdec_t5x.ngram_drafters')
  config = sweep_run['config']
  vocab = config.tasks['ende'].synthetic['vocab_size']
  counts = ngram_drafters.count_ngrams(
      [sweeps.synthetic_inputs(64, 12, vocab, seed=5)], vocab, source='synthetic')
  ngram_drafters.save_counts(tmp_path / 'counts.npz', counts)
  raw = json.loads(json.dumps(config.raw))
  raw['drafts']['bigram'] = {'kind': 'bigram', 'options': {'counts': '{config_dir}/counts.npz'}}
  raw['drafts']['missing'] = {'kind': 'unigram', 'options': {'counts': '{config_dir}/none.npz'}}
  with_bigram = sweeps.config_from_dict(raw, config_dir=tmp_path)
  context = sweeps.SweepContext(with_bigram)
  cell = sweeps.Cell('grid', 'ende', 'bigram', 0.0, 2, 1, 2)
  record = sweeps.measure_cell(cell, context)
  assert record['draft_kind'] == 'bigram' and record['greedy_mismatched_rows'] == 0
  assert 0.0 <= record['alpha_beta'] <= 1.0 and record['c'] > 0
  with pytest.raises(sweeps.DraftUnavailable, match='no n-gram counts'):
    context.drafter('missing', 'ende')
