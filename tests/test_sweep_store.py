"""The append-only store and the plan: done, todo and stale cells, the peer's γ, confirm cells."""

import json

import pytest
from sweep_miniature import MINIATURE_CONFIG

from specdec_t5x import sweep


def test_store_skips_a_partial_line_and_closes_it_off(tmp_path):
  store = sweep.CellStore(tmp_path / 'cells.jsonl')
  assert store.read() == ([], 0)
  store.append({'key': 'a', 'fingerprint': '1', 'value': 1})
  with open(store.path, 'a', encoding='utf-8') as file:
    file.write('{"key": "b", "finger')  # a kill in the middle of an append
  store.append({'key': 'a', 'fingerprint': '1', 'value': 2})
  store.append({'key': 'c', 'fingerprint': '2', 'value': 3})
  records, damaged = store.read()
  assert damaged == 1 and [r['value'] for r in records] == [1, 2, 3]
  current = store.current()
  assert current[('a', '1')]['value'] == 1  # the first record of a pair wins
  assert set(current) == {('a', '1'), ('c', '2')}


def _stored(config, cell, **figures):
  return {'key': cell.key, 'fingerprint': sweep.cell_fingerprint(config, cell),
          **vars(cell), **figures}


def test_plan_marks_done_todo_stale_and_picks_the_peers_gamma(tmp_path):
  config = sweep.load_config(MINIATURE_CONFIG)
  store = sweep.CellStore(tmp_path / 'cells.jsonl')
  cells = sweep.enumerate_cells(config)
  by_key = {cell.key: cell for cell in cells}
  peer = [item for item in sweep.plan(config, store) if item.peer_task]
  assert [(item.status, item.peer_gamma) for item in peer] == [('todo', 2)]  # fallback_gamma
  assert 'fallback_gamma' in peer[0].note
  # The large draft at T=0, batch 1 is fastest at γ=1; one other cell was measured under
  # other settings.
  store.append(_stored(config, by_key['grid/ende/large/T0/g1/b1'], speedup=1.5))
  store.append(_stored(config, by_key['grid/ende/large/T0/g2/b1'], speedup=1.2))
  store.append({**_stored(config, by_key['grid/ende/small/T0/g1/b1'], speedup=0.9),
                'fingerprint': 'from-another-config'})
  statuses = {item.key: item.status for item in sweep.plan(config, store)}
  assert statuses['grid/ende/large/T0/g1/b1'] == statuses['grid/ende/large/T0/g2/b1'] == 'done'
  assert statuses['grid/ende/small/T0/g1/b1'] == 'stale'
  assert statuses['grid/ende/small/T1/g1/b1'] == 'todo'
  records = sweep.current_records(config, store)
  assert [r['key'] for r in records] == ['grid/ende/large/T0/g1/b1', 'grid/ende/large/T0/g2/b1']
  assert sweep.best_gamma(records, 'ende', 'large') == 1
  peer = [item for item in sweep.plan(config, store, ('peer_hf',))]
  assert [(item.key, item.peer_gamma) for item in peer] == [('peer_hf/ende/large', 1)]
  assert sweep.current_peer_records(config, store) == []
  only = sweep.plan(config, store, ('grid',), patterns=['grid/*/large/T0/*'])
  assert [item.status for item in only] == ['done', 'done', 'todo']  # the last is gauto2
  assert json.loads(store.path.read_text().splitlines()[0])['speedup'] == 1.5


def test_confirm_measures_each_groups_fastest_grid_cell_again(tmp_path):
  config = sweep.load_config(MINIATURE_CONFIG)
  assert config.confirm_repeats == 1
  store = sweep.CellStore(tmp_path / 'cells.jsonl')
  assert [item for item in sweep.plan(config, store, ('confirm',))] == []  # no grid yet
  by_key = {cell.key: cell for cell in sweep.enumerate_cells(config)}
  for key, speedup in [('grid/ende/large/T0/g1/b1', 1.1), ('grid/ende/large/T0/g2/b1', 1.4),
                       ('grid/ende/large/T0/gauto2/b1', 2.0), ('grid/ende/small/T1/g1/b1', 0.9)]:
    store.append(_stored(config, by_key[key], speedup=speedup))
  items = sweep.plan(config, store, ('confirm',))
  # The fastest fixed γ of each group (auto is not a γ to confirm), as todo cells.
  assert sorted((i.key, i.status) for i in items) == [('confirm/ende/large/T0/g2/b1/r1', 'todo'),
                                                       ('confirm/ende/small/T1/g1/b1/r1', 'todo')]
  again = next(i.cell for i in items if i.cell.draft == 'large')
  assert (again.gamma, again.repeat, again.section) == (2, 1, 'confirm')
  # Grid cells keep the fingerprints they had before confirm cells existed.
  assert 'repeat' not in by_key['grid/ende/large/T0/g1/b1'].fingerprint_fields()
  store.append(_stored(config, again, speedup=1.2))
  assert [r['speedup'] for r in sweep.current_confirm_records(config, store)] == [1.2]
  assert sorted((i.cell.draft, i.status) for i in sweep.plan(config, store, ('confirm',))) == [
      ('large', 'done'), ('small', 'todo')]
  for bad, message in [({'repeats': -1}, 'confirm.repeats must be an integer >= 1'),
                       ({'times': 2}, "confirm is missing \\['repeats'\\]")]:
    with pytest.raises(ValueError, match=message):
      sweep.config_from_dict({**config.raw, 'confirm': bad})
  with_repeats = sweep.config_from_dict({**config.raw, 'confirm': {'repeats': 2}})
  keys = [c.key for c in sweep.confirm_cells(with_repeats, sweep.current_records(config, store))]
  assert sorted(keys) == ['confirm/ende/large/T0/g2/b1/r1', 'confirm/ende/large/T0/g2/b1/r2',
                          'confirm/ende/small/T1/g1/b1/r1', 'confirm/ende/small/T1/g1/b1/r2']
