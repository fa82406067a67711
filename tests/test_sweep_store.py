"""The append-only store and the plan: done, todo and stale cells, and the peer's γ."""

import json

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
