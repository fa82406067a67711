"""Distillation batches written by the target (`training.generated`), on a 'test_tiny' teacher.

The packing layout against seqio's (the family's cached batches), every segment's new
targets against the teacher's own greedy decoding of that segment alone, the encoder
side left as it was, and the chunked cache resuming and rebuilding.
"""

import pathlib

import jax
import numpy as np
import pytest

from specdec_t5x import decoding
from specdec_t5x.network import Transformer, config_from_preset
from specdec_t5x.training import distill, generated

CONFIG = config_from_preset('test_tiny')


@pytest.fixture(scope='module')
def teacher():
  tokens = np.ones((1, 1), np.int32)
  params = Transformer(CONFIG).init(jax.random.PRNGKey(0), tokens, tokens, tokens,
                                    enable_dropout=False)['params']
  return distill.Teacher(CONFIG, params, pathlib.Path('/nowhere/checkpoint_1'))


def packed_batch(seed: int, rows: int = 3, input_length: int = 24, target_length: int = 20):
  """Rows of 1-3 segments in seqio's packed EncDecFeatureConverter layout."""
  rng = np.random.default_rng(seed)
  batch = {name: np.zeros((rows, input_length if name.startswith('encoder') else target_length),
                          np.int32)
           for name in ('encoder_input_tokens', 'encoder_segment_ids', 'encoder_positions',
                        *generated.DECODER_FEATURES)}
  for row in range(rows):
    outputs, start = {}, 0
    for segment in range(1, rng.integers(1, 4) + 1):
      size = int(rng.integers(2, 7))
      batch['encoder_input_tokens'][row, start:start + size] = rng.integers(2, 64, size)
      batch['encoder_segment_ids'][row, start:start + size] = segment
      batch['encoder_positions'][row, start:start + size] = np.arange(size)
      outputs[(row, segment)] = np.append(rng.integers(2, 64, int(rng.integers(1, 5))), 1)
      start += size
    for name, value in generated.pack_decoder(outputs, rows, target_length).items():
      batch[name][row] = value[row]
  return batch


def test_pack_decoder_matches_seqio_layout():
  # The same two segments as row 0 of a real cached batch of the default family.
  packed = generated.pack_decoder({(0, 1): np.array([66, 3993, 1]), (0, 2): np.array([5, 1])},
                                  rows=1, length=7)
  assert packed['decoder_target_tokens'].tolist() == [[66, 3993, 1, 5, 1, 0, 0]]
  assert packed['decoder_input_tokens'].tolist() == [[0, 66, 3993, 0, 5, 0, 0]]
  assert packed['decoder_segment_ids'].tolist() == [[1, 1, 1, 2, 2, 0, 0]]
  assert packed['decoder_positions'].tolist() == [[0, 1, 2, 0, 1, 0, 0]]
  assert packed['decoder_loss_weights'].tolist() == [[1, 1, 1, 1, 1, 0, 0]]
  cut = generated.pack_decoder({(0, 1): np.array([7, 8, 9, 1]), (0, 2): np.array([5, 1])},
                               rows=1, length=5)
  assert cut['decoder_target_tokens'].tolist() == [[7, 8, 9, 1, 5]]
  assert cut['decoder_segment_ids'].tolist() == [[1, 1, 1, 1, 2]]


def test_segments_are_read_from_packed_and_unpacked_batches():
  batch = packed_batch(0)
  segments = generated.segment_inputs(batch)
  assert sum(int(batch['encoder_segment_ids'][r].max()) for r in range(3)) == len(segments)
  for row, segment, tokens, reference in segments:
    ids = batch['encoder_segment_ids'][row]
    np.testing.assert_array_equal(tokens, batch['encoder_input_tokens'][row][ids == segment])
    assert reference == np.sum(batch['decoder_segment_ids'][row] == segment)
  unpacked = {'encoder_input_tokens': np.array([[5, 6, 0]]),
              'decoder_target_tokens': np.array([[7, 1, 0, 0]])}
  [(row, segment, tokens, reference)] = generated.segment_inputs(unpacked)
  assert (row, segment, tokens.tolist(), reference) == (0, 1, [5, 6], 2)


def test_every_segment_gets_the_teachers_own_greedy_output(teacher):
  batch = packed_batch(1)
  result = generated.generated_batch(teacher, batch)
  for name in ('encoder_input_tokens', 'encoder_segment_ids', 'encoder_positions'):
    np.testing.assert_array_equal(result[name], batch[name])
  module = Transformer(CONFIG)
  for row, segment, tokens, reference in generated.segment_inputs(batch):
    cap = generated.cap_for(reference)
    alone = decoding.autoregressive_decode(module, teacher.params, tokens[None],
                                           max_decode_len=cap)
    expected = np.asarray(alone.tokens[0, :int(alone.lengths[0])])
    ids = result['decoder_segment_ids'][row]
    got = result['decoder_target_tokens'][row][ids == segment]
    # A full row cuts (or drops) its last segments at the feature length, never changes them.
    assert got.size == expected.size or result['decoder_loss_weights'][row].all()
    assert got.size <= expected.size
    np.testing.assert_array_equal(got, expected[:got.size])
    inputs = result['decoder_input_tokens'][row][ids == segment]
    np.testing.assert_array_equal(inputs, np.concatenate([[0], got[:-1]])[:got.size])


def test_unpacked_batches_stay_unpacked(teacher):
  unpacked = {'encoder_input_tokens': np.array([[5, 6, 0], [9, 0, 0]], np.int32),
              'decoder_input_tokens': np.zeros((2, 6), np.int32),
              'decoder_target_tokens': np.array([[7, 1, 0, 0, 0, 0], [3, 4, 1, 0, 0, 0]],
                                                np.int32),
              'decoder_loss_weights': np.zeros((2, 6), np.int32)}
  result = generated.generated_batch(teacher, unpacked)
  assert sorted(result) == sorted(unpacked)
  assert np.all(result['decoder_loss_weights'].sum(1) > 0)


def test_the_cache_resumes_and_rebuilds_for_another_teacher(teacher, tmp_path, monkeypatch):
  monkeypatch.setattr(generated, 'CHUNK_BATCHES', 2)
  make_batches = lambda start: (packed_batch(i) for i in range(start, 100))
  first = generated.cached_generated_batches(tmp_path, teacher, make_batches, 10, 5,
                                             progress=False)
  batches = list(first(0))
  assert len(batches) == 5 and len(list(tmp_path.glob('chunk_*.npz'))) == 3
  expected = generated.generated_batch(teacher, packed_batch(13))
  for name, value in expected.items():
    np.testing.assert_array_equal(batches[3][name], value, err_msg=name)
  assert [b['decoder_target_tokens'].tolist() for b in first(3)] == [
      b['decoder_target_tokens'].tolist() for b in batches[3:]]
  # A killed run: the missing chunk alone is decoded again.
  (tmp_path / 'chunk_00001.npz').unlink()
  calls = []
  original = generated.generated_batches
  monkeypatch.setattr(generated, 'generated_batches',
                      lambda t, b, **k: calls.append(len(b)) or original(t, b, **k))
  again = generated.cached_generated_batches(tmp_path, teacher, make_batches, 10, 5,
                                             progress=False)
  assert calls == [2] and len(list(again(0))) == 5
  other = distill.Teacher(CONFIG, teacher.params, pathlib.Path('/elsewhere/checkpoint_2'))
  generated.cached_generated_batches(tmp_path, other, make_batches, 10, 5, progress=False)
  assert calls == [2, 2, 2, 1]


def test_cached_teacher_hidden_states_ride_with_their_batches(teacher, tmp_path, monkeypatch):
  monkeypatch.setattr(generated, 'CHUNK_BATCHES', 2)
  make_batches = lambda start: (packed_batch(i) for i in range(start, 100))
  factory = generated.cached_generated_batches(tmp_path, teacher, make_batches, 10, 3,
                                               progress=False, teacher_hidden=True)
  batches = list(factory(1))
  assert len(batches) == 2 and len(list(tmp_path.glob('hidden_*.npy'))) == 2
  for batch in batches:
    hidden = batch.pop(distill.TEACHER_HIDDEN)
    np.testing.assert_array_equal(hidden, distill.teacher_hidden(CONFIG, teacher.params, batch))
  seconds = generated.generation_seconds(tmp_path)
  assert seconds > sum(float(p.read_text()) for p in tmp_path.glob('chunk_*.seconds'))
  # A killed run: only the missing chunk's hidden states are computed again.
  (tmp_path / 'hidden_00001.npy').unlink()
  calls = []
  original = distill.teacher_hidden
  monkeypatch.setattr(distill, 'teacher_hidden', lambda *a: calls.append(1) or original(*a))
  again = generated.cached_generated_batches(tmp_path, teacher, make_batches, 10, 3,
                                             progress=False, teacher_hidden=True)
  assert len(calls) == 1 and len(list(again(0))) == 3
  plain = generated.cached_generated_batches(tmp_path, teacher, make_batches, 10, 3,
                                             progress=False)
  assert all(distill.TEACHER_HIDDEN not in batch for batch in plain(0))
