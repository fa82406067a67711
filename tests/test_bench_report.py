"""What every benchmark report shares: machine-free paths, settings records, Markdown tables."""

import argparse
import os
import subprocess
import sys

from specdec_t5x import paths
from specdec_t5x.bench import report


def test_portable_path_writes_the_repository_relative_and_the_cache_as_placeholder(
    tmp_path, monkeypatch):
  monkeypatch.setenv(paths.CACHE_ENV, str(tmp_path / 'cache'))
  assert paths.portable_path(paths.repo_root() / 'results') == 'results'
  assert paths.portable_path(tmp_path / 'cache' / 'ngram' / 'x.npz') == '{cache}/ngram/x.npz'
  assert paths.portable_path('/elsewhere/file') == '/elsewhere/file'  # as the user gave it


def test_settings_record_makes_paths_portable(tmp_path, monkeypatch):
  monkeypatch.setenv(paths.CACHE_ENV, str(tmp_path))
  args = argparse.Namespace(output_dir=paths.repo_root() / 'results', pass_file=None,
                            counts=tmp_path / 'c.npz', rounds=3, presets=['a', 'b'])
  assert report.settings_record(args) == {'output_dir': 'results', 'pass_file': None,
                                          'counts': '{cache}/c.npz', 'rounds': 3,
                                          'presets': ['a', 'b']}


def test_absolute_paths_finds_machine_paths_anywhere_in_a_record():
  record = {'command': 'python scripts/x.py --output-dir /work/main/results',
            'settings': {'family_config': 'configs/family.json', 'cache': '{cache}/ngram'},
            'rows': [{'note': 'ms/step, time / ours'}, {'/root/key': 1}], 'home': '~/.cache/x'}
  assert report.absolute_paths(record) == ['/work/main/results', '/root/key', '~/.cache/x']
  assert report.absolute_paths({'a': ['results/x.json', 'K=1 time / cpu_target']}) == []


def test_markdown_table():
  assert report.markdown_table(['a', 'b'], [[1, 'x'], ['', 2.5]]) == (
      '| a | b |\n|---|---|\n| 1 | x |\n|  | 2.5 |')


def test_utc_date_is_iso_to_the_second():
  date = report.utc_date()
  assert date.endswith('+00:00') and len(date) == len('2026-01-01T00:00:00+00:00')


def test_benchmark_scripts_are_thin_command_lines():
  """They import the package, never another script, and their --help works."""
  scripts = paths.repo_root() / 'scripts'
  names = {path.stem for path in scripts.glob('*.py')}
  for name in ('bench_baselines', 'bench_scoring_cost', 'bench_loop_overhead',
               'measure_cheap_drafts'):
    text = (scripts / f'{name}.py').read_text()
    imported = {line.split()[1].split('.')[0] for line in text.splitlines()
                if line.startswith(('import ', 'from '))}
    assert not imported & names, f'{name} imports scripts {imported & names}'
    assert 'sys.path.insert' not in text
    done = subprocess.run([sys.executable, str(scripts / f'{name}.py'), '--help'],
                          capture_output=True, text=True, check=False,
                          env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
    assert done.returncode == 0, done.stderr
    assert '--output-dir' in done.stdout
