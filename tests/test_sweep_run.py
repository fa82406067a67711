"""The sweep end to end on configs/sweep_miniature.json, with tiny random checkpoints.

One module-scoped run (`sweep_miniature`: random models, synthetic inputs) is
interrupted twice (a cell budget, then an exception from the record callback,
after a kill left half a line in the store) and resumed; every test reads its
results, its report, or runs scripts/sweep.py on its store.
"""

import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest
from sweep_miniature import miniature_config_dict

from specdec_t5x import paper, paths, sweep

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
SWEEP_SCRIPT = paths.repo_root() / 'scripts' / 'sweep.py'


@pytest.fixture(scope='module')
def sweep_run(tmp_path_factory):
  """Runs the miniature sweep with two interruptions; returns what each stage saw."""
  root = tmp_path_factory.mktemp('sweep')
  config = sweep.config_from_dict(miniature_config_dict(root / 'models'), config_dir=root)
  store = sweep.CellStore(root / 'cells.jsonl')
  context = sweep.SweepContext(config)
  all_keys = [item.key for item in sweep.plan(config, store)]

  # 1. A time-boxed run stops after two cells.
  first = sweep.run_sweep(config, store, max_new=2, progress=False, context=context,
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
    sweep.run_sweep(config, store, progress=False, context=context, on_record=crash,
                    command='test run 2')
  after_crash = store.read()[0]
  # 4. Resume to the end, then a rerun that must measure nothing.
  resumed = sweep.run_sweep(config, store, progress=False, context=context,
                            command='test run 3')
  rerun = sweep.run_sweep(config, store, progress=False, context=context,
                          command='test run 4')
  written = sweep.write_report(config, store, root / 'results', skipped=resumed.skipped)
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
  again = sorted(k for k in keys if k.startswith('confirm/'))
  assert sorted(set(keys) - set(again)) == sorted(sweep_run['all_keys'])
  # Confirm cells are planned once grid cells exist: each group's fastest γ, once (repeats 1).
  config, store = sweep_run['config'], sweep_run['store']
  assert again == sorted(item.key for item in sweep.plan(config, store, ('confirm',)))
  assert len(again) == 4 and all(k.endswith('/r1') for k in again)
  assert len(keys) == len(set(keys)), 'a cell was measured twice'
  # The resumed runs appended; the records written before the interruptions are unchanged.
  assert records[:3] == sweep_run['after_crash']
  assert sweep_run['resumed'].already_done == 3
  assert sweep_run['rerun'].measured == [] and not sweep_run['rerun'].skipped


def test_records_hold_sane_figures(sweep_run):
  config = sweep_run['config']
  records = sweep.current_records(config, sweep_run['store'])
  assert len(records) == len(sweep.enumerate_cells(config))
  for r in records:
    assert r['speedup'] > 0 and math.isfinite(r['speedup']), r['key']
    assert 0.0 <= r['alpha_beta'] <= 1.0
    if r['gamma'] == 'auto':
      # Iterations at each γ sum to all iterations; the profile was measured in the cell.
      assert sum(r['gamma_iterations']) == sum(r['per_batch']['iterations']) > 0
      assert len(r['cost_profile']['iteration_cost']) == r['max_gamma'] + 1
      assert 1.0 <= r['tokens_per_iteration'] <= r['max_gamma'] + 1
      # α is carried from batch to batch: the first starts from the α the calibration
      # measured on untimed inputs (the profile's), each next one from the estimate so far.
      priors = r['alpha_priors']
      assert len(priors) == r['num_inputs'] // r['batch']
      measured = r['cost_profile']['alpha']
      assert 0.0 < measured <= 1.0 and r['cost_profile']['alpha_positions'] > 0
      assert priors[0] == pytest.approx(min(measured, 1.0 - 1e-7))
      assert all(0.0 <= p < 1.0 for p in priors[1:])
    else:
      assert 0.0 <= r['alpha_acceptance'] <= 1.0
      assert r['c'] > 0 and r['scoring_cost'] > 0 and r['target_step_ms'] > 0
      assert 1.0 <= r['tokens_per_iteration'] <= r['gamma'] + 1
      assert r['theory_measured'] == pytest.approx(
          r['expected_tokens_per_iteration'] / (r['gamma'] * r['c'] + r['scoring_cost']))
      # A request's set-up (encoder pass, caches) is timed too, and enters the theory per request.
      assert r['setup_steps'] > 0 and r['draft_setup_steps'] >= 0
      setup, draft_setup = r['setup_steps'], r['draft_setup_steps']
      steps = np.maximum(np.asarray(r['per_batch']['autoregressive_tokens']) / r['batch'], 1.0)
      iteration = (r['gamma'] * r['c'] + r['scoring_cost']) / r['expected_tokens_per_iteration']
      assert r['theory_request'] == pytest.approx(
          np.median((setup + steps) / (setup + draft_setup + steps * iteration)))
    assert len(r['per_batch']['speculative_s']) == r['num_inputs'] // r['batch']
    # α pools β over the verified positions behind it (SpeculativeOutput.beta_count).
    per_batch = r['per_batch']
    assert r['alpha_beta'] == pytest.approx(sum(per_batch['beta_sum'])
                                            / max(sum(per_batch['beta_count']), 1))
    if r['temperature'] == 0.0:
      # Greedy speculative output must equal the autoregressive output token for token.
      assert r['greedy_mismatched_rows'] == 0, r['key']
  # Greedy: the perturbed copy of the target is a far better draft than an unrelated model.
  alpha = lambda draft: np.mean([r['alpha_beta'] for r in records if r['draft'] == draft
                                 and r['section'] == 'grid' and r['temperature'] == 0.0])
  assert alpha('large') > alpha('small') + 0.3


def test_peer_compares_outputs_and_times(sweep_run):
  peers = sweep.current_peer_records(sweep_run['config'], sweep_run['store'])
  assert len(peers) == 1
  peer = peers[0]
  grid = sweep.current_records(sweep_run['config'], sweep_run['store'])
  assert peer['gamma'] == sweep.best_gamma(grid, 'ende', 'large')
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
    assert re.fullmatch(r'\d+\.\d\dx', row[head.index('Speed, measured again')])  # 1 repeat
  paper_speed = {(row[1].split()[0], row[2]): row[head.index('Paper speed')] for row in rows}
  assert paper_speed[('small', '0')] == '3.4x' and paper_speed[('large', '1')] == '1.4x'
  kinds, goals = tables[1], tables[2:4]
  assert kinds[0][:3] == ['Task', 'Size (paper)', 'Draft'] and len(kinds) == 2 + 2  # 2 drafts
  for speed, goal in zip(('1.3x', '2x'), goals, strict=True):  # issue #16's bar, then the goal
    assert goal[0][:2] == ['Task', 'Draft'] and f'α for {speed}' in goal[0]
    assert len(goal) == 2 + 2  # 1 task × 2 temperatures
    assert all(row[-1] for row in goal[2:])  # each names what separates it from that speed
  auto, throughput = tables[4], tables[5]
  assert auto[0][:5] == ['Section', 'Task', 'Draft', 'Temp', 'Batch']
  # The large draft at T = 0 and 1 (grid), and at batch 1 and 2 (throughput).
  assert [(row[0], row[3], row[4]) for row in auto[2:]] == [
      ('grid', '0', '1'), ('grid', '1', '1'), ('throughput', '0', '1'), ('throughput', '0', '2')]
  for row in auto[2:]:
    assert row[5] in ('1', '2')  # the best fixed γ measured beside it
    assert re.fullmatch(r'\d+\.\d\dx', row[7]) and len(row[-1].split()) == 3  # γ = 0, 1, 2
    assert re.fullmatch(r'\d\.\d\d', row[11])  # the prior α, from the calibration
  assert [(row[3], row[4]) for row in throughput[2:]] == [('2', '1'), ('auto', '1'), ('2', '2'),
                                                          ('auto', '2')]

  table3 = _markdown_tables((results / 'table3.md').read_text())[0]
  assert table3[0][:4] == ['Task', 'Draft', 'Kind', 'α T=0']
  assert len(table3) == 2 + 2

  summary = json.loads((results / 'sweep.json').read_text())
  assert len(summary['cells']) == len(sweep.enumerate_cells(sweep_run['config']))
  assert summary['store_damaged_lines'] == 1
  assert len(summary['projection_tpu']) == len(paper.PAPER_TABLE2)
  assert 'test run 1' in summary['commands'] and 'test run 3' in summary['commands']
  projection = (results / 'projection_tpu.md').read_text()
  assert _markdown_tables(projection)[0][2][:2] == ['EnDe', 'T5-small']


def test_changed_config_marks_cells_stale(sweep_run, tmp_path):
  raw = json.loads(json.dumps(sweep_run['config'].raw))
  raw['tasks']['ende']['max_decode_len'] += 1
  changed = sweep.config_from_dict(raw, config_dir=tmp_path)
  statuses = {item.key: item.status for item in sweep.plan(changed, sweep_run['store'])}
  assert set(statuses.values()) == {'stale'}


def _sweep_script(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, str(SWEEP_SCRIPT), *args], capture_output=True,
                        text=True, check=False, timeout=300)


def test_cli_dry_run_lists_cells_and_help_explains_options(sweep_run, tmp_path):
  config_path = tmp_path / 'config.json'
  config_path.write_text(json.dumps(sweep_run['config'].raw))
  dry_run = _sweep_script('--config', str(config_path), '--store',
                          str(sweep_run['store'].path), '--dry-run')
  assert dry_run.returncode == 0, dry_run.stderr
  out = dry_run.stdout
  cells = len(sweep_run['all_keys']) + 4  # and the confirm cells, planned from the grid
  assert f"{cells} cells: {cells} done" in out
  assert 'done   grid/ende/small/T0/g1/b1' in out and 'done   confirm/ende/small/T0/' in out
  shown = _sweep_script('--help')
  assert shown.returncode == 0, shown.stderr
  for option in ('--config', '--output-dir', '--store', '--sections', '--only', '--max-cells',
                 '--dry-run', '--report-only', '--no-report', '--no-progress'):
    assert option in shown.stdout
