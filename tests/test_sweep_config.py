"""Sweep configs: validation with clear errors, the shipped configs, path templates, cells."""

import json

import pytest
from sweep_miniature import MINIATURE_CONFIG

from specdec_t5x import paths, sweep


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
    sweep.config_from_dict(raw)


def test_shipped_configs_load_and_plan():
  for name in ('sweep_default.json', 'sweep_miniature.json', 'sweep_paper.json'):
    config = sweep.load_config(paths.repo_root() / 'configs' / name)
    assert sweep.enumerate_cells(config)
  default = sweep.load_config(paths.repo_root() / 'configs' / 'sweep_default.json')
  grid = [c for c in sweep.enumerate_cells(default) if c.section == 'grid']
  assert {c.gamma for c in grid} == set(range(1, 9)) | {'auto'}
  assert {c.temperature for c in grid} == {0, 1}
  assert {c.batch for c in sweep.enumerate_cells(default, ('throughput',))} == {1, 4, 8, 16}
  # A draft's `gammas` limits its cells (PaSS drafts at most L = 6 tokens), its auto cell's
  # max_gamma too; `auto` lists its drafts: every draft, after its fixed γs, up to γ = 8.
  assert {c.gamma for c in grid if c.draft == 'pass' and not c.is_auto} == set(range(1, 7))
  auto = [c for c in grid if c.is_auto]
  assert len(auto) == 9 * 2 * 2
  assert {c.max_gamma for c in auto if c.draft != 'pass'} == {8}
  assert {c.max_gamma for c in auto if c.draft == 'pass'} == {6}
  assert auto[0].key == 'grid/ende/small/T0/gauto8/b1'
  assert 'max_gamma' not in grid[0].fingerprint_fields()  # fixed cells keep their fingerprints


def test_auto_section_settings_are_checked(tmp_path):
  raw = json.loads((paths.repo_root() / 'configs' / 'sweep_miniature.json').read_text())
  for bad in ({'max_gamma': 0}, {'max_gamma': 4, 'drafts': ['nope']}, [4], {'gamma': 4}):
    raw['grid']['auto'] = bad
    (tmp_path / 'c.json').write_text(json.dumps(raw))
    with pytest.raises(ValueError, match='grid.auto'):
      sweep.load_config(tmp_path / 'c.json')


def test_path_templates_expand(tmp_path):
  assert sweep.expand_path('{config_dir}/{task}.npz', tmp_path, 'ende') == f'{tmp_path}/ende.npz'
  assert sweep.expand_path('{cache}/x', '.') == f'{paths.cache_dir()}/x'
  with pytest.raises(ValueError, match='task'):
    sweep.expand_path('{task}.npz', tmp_path)


def test_cell_keys_and_patterns():
  config = sweep.load_config(MINIATURE_CONFIG)
  cells = sweep.enumerate_cells(config)
  assert cells[0].key == 'grid/ende/small/T0/g1/b1'
  only = sweep.filter_cells(cells, ['grid/ende/large/T1/*'])
  assert [c.key for c in only] == ['grid/ende/large/T1/g1/b1', 'grid/ende/large/T1/g2/b1',
                                   'grid/ende/large/T1/gauto2/b1']
