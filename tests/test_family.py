"""Model families (`training.family`, `training.evaluation`), and the miniature one end to end.

The end-to-end test runs the scripts: it trains the `miniature` family (configs/family.json)
in a temporary $SPECDEC_CACHE_DIR, evaluates it and checks the results files. Its data: the
real DDTP data if scripts/build_data.py has built it in the usual cache (linked, read only),
otherwise the hand-written lists of tests/fixtures/ddtp built into the temporary cache. No
root, no network. The full `default` family (about an hour) runs only with `-m slow`.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from specdec_t5x import paths
from specdec_t5x.training import evaluation, family_runs, family_target
from specdec_t5x.training import family as family_lib

REPO = paths.repo_root()
SCRIPTS = REPO / 'scripts'
FIXTURE_DIR = REPO / 'tests' / 'fixtures' / 'ddtp'
# The fixture's smallest test/validation split (summarize) has 3 / 2 examples.
FIXTURE_EVAL_ARGS = ['--num-examples', '2', '--validation-examples', '2', '--batch-size', '2']
REAL_EVAL_ARGS = ['--num-examples', '16', '--validation-examples', '16', '--batch-size', '8']


# ---------------------------------------------------------------------------------------------
# Configuration.


@pytest.mark.parametrize('name', ['default', 'miniature'])
def test_families_load_and_the_target_is_the_largest(name):
  family = family_lib.load_family(name)
  counts = family_lib.check_param_ratio(family)
  target = family_lib.target_model(family)['name']
  drafts = [count for model, count in counts.items() if model != target]
  assert counts[target] >= family['min_target_param_ratio'] * max(drafts)
  assert all(m['preset'].startswith('cpu_') for m in family['models']) == (name == 'default')


def test_default_family_mirrors_the_paper():
  family = family_lib.load_family('default')
  assert family['min_target_param_ratio'] >= 5
  assert family['mixture'] == 'ddtp_all'
  counts = family_lib.check_param_ratio(family)
  # small < base < large < target, as T5-small/base/large against T5-XXL.
  independent = [m for m in family['models'] if 'distill' not in m]
  assert [model['name'] for model in sorted(independent, key=lambda m: counts[m['name']])
          ] == ['small', 'base', 'large', 'target']
  # Each independent draft has a distilled twin of the same shape (the sweep sets them side
  # by side), continuing it on training batches the family has.
  distilled = {m['distill']['from']: m for m in family['models'] if 'distill' in m}
  assert sorted(distilled) == ['base', 'large', 'small']
  for name, model in distilled.items():
    assert counts[model['name']] == counts[name]
    assert family_lib.batches_needed(model, family) <= family_lib.target_model(
        family)['num_steps']  # no more batches than the target's: none to build


def test_unknown_family_and_bad_entries_are_refused(tmp_path):
  with pytest.raises(ValueError, match="unknown family 'nope'"):
    family_lib.load_family('nope')
  family = json.loads(family_lib.DEFAULT_CONFIG.read_text())['families']['miniature']
  bad = {**family, 'models': [{**family['models'][0], 'preset': 'no_such_preset'}]
         + family['models'][1:]}
  with pytest.raises(ValueError, match="unknown preset 'no_such_preset'"):
    family_lib.check_family('bad', bad)
  no_target = {**family, 'models': [m for m in family['models'] if m['role'] != 'target']}
  with pytest.raises(ValueError, match="exactly one 'target'"):
    family_lib.check_family('bad', no_target)
  lacking = {key: value for key, value in family.items() if key != 'batch_size'}
  with pytest.raises(ValueError, match="lacks \\['batch_size'\\]"):
    family_lib.check_family('bad', lacking)


def test_param_ratio_is_enforced():
  family = family_lib.load_family('miniature')
  swapped = {**family, 'min_target_param_ratio': 1000.0}
  with pytest.raises(ValueError, match='only .*x the largest draft'):
    family_lib.check_param_ratio(swapped)


def test_plan_lines_name_every_model_with_its_size():
  family = family_lib.load_family('miniature')
  counts = family_lib.check_param_ratio(family)
  lines = family_lib.plan_lines('miniature', family, family['models'], counts)
  assert lines[0].startswith(f"family 'miniature': {family['mixture']}, batch ")
  assert len(lines) == 1 + len(family['models'])
  for line, model in zip(lines[1:], family['models'], strict=True):
    assert line.split()[0] == model['name'] and f'{model["num_steps"]} steps' in line


# ---------------------------------------------------------------------------------------------
# Paths: recorded machine-free, read back here.


def test_recorded_paths_are_machine_free_and_resolve_back(tmp_path, monkeypatch):
  monkeypatch.setenv(paths.CACHE_ENV, str(tmp_path))
  checkpoint = family_lib.model_dir('fam', 'target') / 'checkpoint_3'
  assert checkpoint == tmp_path / 'models' / 'fam' / 'target' / 'checkpoint_3'
  family = family_lib.load_family('miniature')
  summary = family_runs.training_summary('fam', family, family_lib.DEFAULT_CONFIG, [])
  assert summary['config_file'] == 'configs/family.json'
  assert paths.resolve_portable_path('{cache}/models/fam/target/checkpoint_3') == checkpoint
  assert paths.resolve_portable_path('configs/family.json') == family_lib.DEFAULT_CONFIG
  assert paths.resolve_portable_path(str(checkpoint)) == checkpoint  # older records
  row = {'cached': True, 'checkpoint': '{cache}/models/fam/target/checkpoint_3',
         'load_average_1min_at_end': 0.5}
  earlier = {'checkpoint': str(checkpoint), 'load_average_1min_at_end': 1.75}
  assert family_runs.keep_recorded_load(dict(row), earlier)['load_average_1min_at_end'] == 1.75
  moved = {**earlier, 'checkpoint': str(tmp_path / 'elsewhere')}
  assert family_runs.keep_recorded_load(dict(row), moved)['load_average_1min_at_end'] == 0.5


def test_the_target_comes_from_the_family_or_from_a_checkpoint_and_preset(tmp_path,
                                                                          monkeypatch):
  monkeypatch.setenv(paths.CACHE_ENV, str(tmp_path))
  family = family_lib.load_family('miniature')
  target = family_lib.target_model(family)
  config, checkpoint, preset, label = family_target.target_spec('miniature')
  assert config == family_lib.model_config(target) and preset == target['preset']
  assert checkpoint == family_lib.model_dir('miniature', target['name'])
  assert label == f'miniature/{target["name"]} ({target["preset"]})'
  config, checkpoint, preset, label = family_target.target_spec(
      target_checkpoint='/some/ckpt', target_preset='test_tiny',
      target_overrides={'vocab_size': 128})
  assert config.vocab_size == 128 and checkpoint == pathlib.Path('/some/ckpt')
  assert preset == label == 'test_tiny'
  with pytest.raises(ValueError, match='go together'):
    family_target.target_spec(target_checkpoint='/some/ckpt')
  with pytest.raises(ValueError, match='not found: .*missing.json; train the family'):
    family_target.target_spec('miniature', tmp_path / 'missing.json')


# ---------------------------------------------------------------------------------------------
# Evaluation settings, and the page.


def test_eval_settings_and_missing_training_are_refused(tmp_path, monkeypatch):
  monkeypatch.setenv(paths.CACHE_ENV, str(tmp_path))
  family = family_lib.load_family('miniature')
  settings = evaluation.eval_settings(family, {'num_examples': 3, 'split': None})
  assert settings == {**family['eval'], 'num_examples': 3}
  with pytest.raises(ValueError, match='must be >= 1'):
    evaluation.eval_settings(family, {'batch_size': 0})
  with pytest.raises(ValueError, match='train the family first'):
    evaluation.trained_rows('miniature', family)
  with pytest.raises(ValueError, match='run without --report-only first'):
    evaluation.rewrite_markdown(tmp_path, 'miniature', family, family_lib.DEFAULT_CONFIG)
  assert evaluation.output_paths(tmp_path, 'default') == (tmp_path / 'models.md',
                                                          tmp_path / 'models.json')


# ---------------------------------------------------------------------------------------------
# Metrics.


def test_metrics_rank_a_good_output_above_a_bad_one():
  references = ['Dieses Paket enthält die Entwicklungsdateien.', 'Werkzeuge für Ada']
  good = evaluation.bleu_scores(references, references)
  bad = evaluation.bleu_scores(['foo bar baz qux', 'x y z w'], references)
  assert good['bleu'] == pytest.approx(100.0) and bad['bleu'] < 5.0
  rouge_good = evaluation.rouge_scores(['tools for Ada'], ['tools for Ada'])
  rouge_half = evaluation.rouge_scores(['tools for Python'], ['tools for Ada'])
  assert rouge_good['rouge1'] == pytest.approx(100.0)
  assert 0.0 < rouge_half['rouge1'] < rouge_good['rouge1']
  with pytest.raises(ValueError, match='as many hypotheses as references'):
    evaluation.rouge_scores(['a'], ['a', 'b'])


def test_strip_prefix():
  assert evaluation.strip_prefix('summarize: text here', 'summarize: ') == 'text here'
  with pytest.raises(ValueError, match='task prefix'):
    evaluation.strip_prefix('text', 'summarize: ')


def test_quality_checks_catch_a_draft_that_beats_the_target():
  def row(name, role, bleu, rouge):
    return {'name': name, 'role': role, 'ende': {'bleu': bleu}, 'summarize': {'rougeL': rouge}}

  rows = [row('target', 'target', 20.0, 30.0), row('small', 'draft', 21.0, 25.0),
          row('copy-input', 'baseline', 10.0, 26.0)]
  failed = {c['claim'] for c in evaluation.quality_checks(rows) if not c['passed']}
  assert failed == {'target > small on ende bleu', 'small > copy-input on summarize rougeL'}


# ---------------------------------------------------------------------------------------------
# End to end.


def test_train_family_dry_run_prints_the_plan():
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  result = run_script([str(SCRIPTS / 'train_family.py'), '--family', 'miniature', '--dry-run'],
                      env, timeout=300)
  family = family_lib.load_family('miniature')
  counts = family_lib.check_param_ratio(family)
  assert result.stdout.splitlines() == family_lib.plan_lines('miniature', family,
                                                             family['models'], counts)


def real_data_root() -> pathlib.Path | None:
  """The cache holding data built by scripts/build_data.py, if any."""
  root = pathlib.Path(os.environ.get(paths.CACHE_ENV, '~/.cache/specdec_t5x')).expanduser()
  stamp = root / 'ddtp' / 'build.json'
  if not stamp.is_file():
    return None
  built = json.loads(stamp.read_text())
  if not pathlib.Path(built.get('vocab_path', '')).is_file() or not (root / 'tfds').is_dir():
    return None
  return root


def run_script(args: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
  result = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
  assert result.returncode == 0, f'{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}'
  return result


@pytest.fixture(scope='module')
def miniature_cache(tmp_path_factory):
  """`(env, eval_args)`: a temporary cache with data, for subprocesses."""
  cache = tmp_path_factory.mktemp('specdec_cache')
  env = {**os.environ, paths.CACHE_ENV: str(cache), 'JAX_PLATFORMS': 'cpu'}
  real = real_data_root()
  if real is not None:
    for part in ('tfds', 'vocab', 'ddtp', 'jax_compilation_cache'):
      if (real / part).is_dir():
        (cache / part).symlink_to(real / part, target_is_directory=True)
    return env, REAL_EVAL_ARGS
  run_script([str(SCRIPTS / 'build_data.py'), '--translations-dir', str(FIXTURE_DIR),
              '--allow-small-vocab'], env, timeout=600)
  return env, FIXTURE_EVAL_ARGS


def test_miniature_family_end_to_end(miniature_cache, tmp_path):
  env, eval_args = miniature_cache
  cache = pathlib.Path(env[paths.CACHE_ENV])
  run_script([str(SCRIPTS / 'train_family.py'), '--family', 'miniature', '--no-progress'],
             env, timeout=600)
  training = json.loads((cache / 'models' / 'miniature' / 'training.json').read_text())
  assert [row['name'] for row in training['models']] == ['target', 'large', 'base', 'small',
                                                          'large_distilled']
  # The distilled draft continues large's 200 steps for 40 more, towards the target: two
  # passes over the target's outputs for the 20 batches after those 200.
  distilled = training['models'][-1]
  assert distilled['num_steps'] == 240 and distilled['distill']['from'] == 'large'
  generated = sorted((cache / 'batches' / 'miniature-target-greedy').iterdir())
  assert [path.name for path in generated] == ['200-20']
  assert training['config_file'] == 'configs/family.json'
  for row in training['models']:
    # Recorded machine-free, as `{cache}/...`.
    assert row['checkpoint'] == f'{{cache}}/models/miniature/{row["name"]}/checkpoint_' \
                                f'{row["num_steps"]}'
    assert (cache / row['checkpoint'].removeprefix('{cache}/') / 'state').is_dir()
    assert row['num_params'] > 0 and row['train_seconds'] > 0 and not row['cached']

  # A second run finds every checkpoint and trains nothing.
  again = run_script([str(SCRIPTS / 'train_family.py'), '--family', 'miniature',
                      '--no-progress'], env, timeout=300)
  assert again.stdout.count('] cached:') == 5
  cached = json.loads((cache / 'models' / 'miniature' / 'training.json').read_text())
  assert all(row['cached'] for row in cached['models'])
  assert [row['train_seconds'] for row in cached['models']] == [
      row['train_seconds'] for row in training['models']]

  run_script([str(SCRIPTS / 'evaluate_family.py'), '--family', 'miniature', '--results-dir',
              str(tmp_path), *eval_args], env, timeout=600)
  report_text = (tmp_path / 'models.miniature.json').read_text()
  assert str(cache) not in report_text and str(cache.resolve()) not in report_text
  report = json.loads(report_text)
  names = [row['name'] for row in report['models']]
  assert names == ['target', 'large', 'base', 'small', 'large_distilled', 'copy-input']
  for row in report['models']:
    assert 0.0 <= row['ende']['bleu'] <= 100.0
    assert all(0.0 <= row['summarize'][k] <= 100.0 for k in ('rouge1', 'rouge2', 'rougeL'))
    if row['role'] != 'baseline':
      assert row['ende']['validation_loss'] > 0 and row['summarize']['validation_loss'] > 0
  # Target vs each of 4 drafts, and each of 5 models vs copy-input, on BLEU and ROUGE-L.
  assert len(report['checks']) == 2 * (4 + 5)
  markdown = (tmp_path / 'models.miniature.md').read_text()
  for name in names:
    assert f'| {name} |' in markdown
  assert 'scripts/evaluate_family.py' in markdown and '## Checks' in markdown
  # The report is rebuilt from models.json alone (e.g. after the notes file changed).
  (tmp_path / 'models.miniature.md').unlink()
  run_script([str(SCRIPTS / 'evaluate_family.py'), '--family', 'miniature', '--results-dir',
              str(tmp_path), '--report-only'], env, timeout=300)
  assert (tmp_path / 'models.miniature.md').read_text() == markdown


@pytest.mark.slow
def test_default_family_trains_and_passes_its_quality_checks(tmp_path):
  """The real thing: about an hour on 2 cores; uses (and fills) the usual cache."""
  if real_data_root() is None:
    pytest.skip('the DDTP data is not built (scripts/build_data.py)')
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  run_script([str(SCRIPTS / 'train_family.py'), '--family', 'default', '--no-progress'], env,
             timeout=3 * 3600)
  run_script([str(SCRIPTS / 'evaluate_family.py'), '--family', 'default', '--results-dir',
              str(tmp_path), '--strict'], env, timeout=3600)
  report = json.loads((tmp_path / 'models.json').read_text())
  assert all(check['passed'] for check in report['checks'])
