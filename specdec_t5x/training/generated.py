"""Distillation batches whose targets the TARGET wrote: the draft learns on its prefixes.

At T = 0 speculative decoding runs along the target's greedy continuation, so
α is the rate at which the draft's argmax matches the target's *on the
target's own prefixes*. Teacher forcing on the references trains the draft on
other prefixes (exposure bias); DistillSpec (Zhou et al. 2023, arXiv:2310.08461,
§4) found teacher- and draft-generated data to distil better drafts than the
ground truth. Here the family's packed training batches keep their encoder
side exactly; each packed segment's reference target is replaced by the target
model's greedy output for that segment's input (EOS included, capped at
`cap_for(reference length)` tokens), and the decoder side is packed again in
seqio's `EncDecFeatureConverter` layout. Only training inputs are ever decoded.

Decoding the inputs costs a fraction of the distillation it feeds (one batched
greedy decode per input, shared by every draft distilled on it); the batches
are cached under a directory in chunks, so a killed run resumes. With them
can be cached the teacher's decoder output for each batch
(`distill.TEACHER_HIDDEN`, ~1 MB a default-family batch): a distillation step
then applies only the teacher's logits layer, so the drafts' passes over the
batches (the small draft reads them six times) pay the target's forward pass
once per batch instead of once per step.

Shapes: `R` rows of a packed batch, `S` the decoder feature length.
"""

from __future__ import annotations

import itertools
import json
import pathlib
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tqdm

from specdec_t5x import decoding, paths
from specdec_t5x.network import Transformer
from specdec_t5x.training import distill
from specdec_t5x.training.loop import Batch, BatchFactory

DECODER_FEATURES = ('decoder_input_tokens', 'decoder_target_tokens', 'decoder_segment_ids',
                    'decoder_positions', 'decoder_loss_weights')
CHUNK_BATCHES = 25      # packed batches per cached chunk (the unit a killed run resumes at)
DECODE_ROWS = 64        # inputs per greedy decoding call
LENGTH_QUANTUM = 32     # inputs and caps are padded to multiples of this (fewer compilations)
MAX_CAP = 64            # the sweep's longest output; longer references still give 64-token prefixes


def cap_for(reference_length: int) -> int:
  """The most tokens the target may write for a segment whose reference has this length.

  Generous (outputs a little longer than the references are kept whole) but
  bounded, so a target that repeats itself does not fill the batch.
  """
  return min(reference_length + reference_length // 2 + 4, MAX_CAP)


def segment_inputs(batch: Batch) -> list[tuple[int, int, np.ndarray, int]]:
  """Every packed segment of `batch`: `(row, segment id, encoder tokens, reference length)`."""
  segments = []
  # An unpacked batch (no segment ids) holds one segment per row.
  encoder_ids = batch.get('encoder_segment_ids', batch['encoder_input_tokens'] > 0)
  decoder_ids = batch.get('decoder_segment_ids', batch['decoder_target_tokens'] > 0)
  for row in range(encoder_ids.shape[0]):
    for segment in np.unique(encoder_ids[row][encoder_ids[row] > 0]):
      tokens = batch['encoder_input_tokens'][row][encoder_ids[row] == segment]
      segments.append((row, int(segment), tokens, int(np.sum(decoder_ids[row] == segment))))
  return segments


def pack_decoder(outputs: Mapping[tuple[int, int], np.ndarray], rows: int,
                 length: int) -> dict[str, np.ndarray]:
  """The decoder features `[R, S]` of `outputs[(row, segment)]` packed in segment order.

  As seqio packs: per segment, targets are its tokens, inputs the same shifted
  right with 0 first, positions restart at 0, loss weight 1. Segments that do
  not fit are cut at `length` (a cut segment is still teacher-forcing data).
  """
  packed = {name: np.zeros((rows, length), np.int32) for name in DECODER_FEATURES}
  starts = [0] * rows  # where each row's next segment goes
  for (row, segment), tokens in sorted(outputs.items()):
    start = starts[row]
    tokens = np.asarray(tokens[:length - start], np.int32)
    end = start + tokens.size
    packed['decoder_target_tokens'][row, start:end] = tokens
    packed['decoder_input_tokens'][row, start + 1:end] = tokens[:-1]
    packed['decoder_segment_ids'][row, start:end] = segment
    packed['decoder_positions'][row, start:end] = np.arange(tokens.size)
    packed['decoder_loss_weights'][row, start:end] = 1
    starts[row] = end
  return packed


def _round_up(value: int, quantum: int) -> int:
  return -(-value // quantum) * quantum


def greedy_outputs(teacher: distill.Teacher, inputs: Sequence[np.ndarray],
                   caps: Sequence[int], *, eos_id: int = 1) -> list[np.ndarray]:
  """The teacher's greedy output for each input (at most its cap, EOS included)."""
  module = Transformer(teacher.config)
  # A decoding call runs until its longest row ends, and a target that repeats
  # itself runs to the cap: rows of similar caps (then input lengths) go together.
  order = np.lexsort(([tokens.size for tokens in inputs], list(caps)))
  outputs: list[np.ndarray] = [np.zeros(0, np.int32)] * len(inputs)
  for first in range(0, len(order), DECODE_ROWS):
    chosen = order[first:first + DECODE_ROWS]
    width = _round_up(max(inputs[i].size for i in chosen), LENGTH_QUANTUM)
    tokens = np.zeros((DECODE_ROWS, width), np.int32)  # padding rows decode and are dropped
    for slot, i in enumerate(chosen):
      tokens[slot, :inputs[i].size] = inputs[i]
    max_len = _round_up(max(caps[i] for i in chosen), LENGTH_QUANTUM)
    result = decoding.autoregressive_decode(module, teacher.params, tokens,
                                            max_decode_len=max_len, eos_id=eos_id)
    decoded, lengths = np.asarray(result.tokens), np.asarray(result.lengths)
    for slot, i in enumerate(chosen):
      outputs[i] = decoded[slot, :min(lengths[slot], caps[i])]
  return outputs


def generated_batch(teacher: distill.Teacher, batch: Batch, *, eos_id: int = 1) -> Batch:
  """`batch` with every segment's decoder side replaced by the teacher's greedy output."""
  return generated_batches(teacher, [batch], eos_id=eos_id)[0]


def generated_batches(teacher: distill.Teacher, batches: Sequence[Batch], *,
                      eos_id: int = 1) -> list[Batch]:
  """`generated_batch` of each of `batches`, their inputs decoded together."""
  keyed = [(index, *segment) for index, batch in enumerate(batches)
           for segment in segment_inputs(batch)]
  outputs = greedy_outputs(teacher, [tokens for *_, tokens, _ in keyed],
                           [cap_for(reference) for *_, reference in keyed], eos_id=eos_id)
  per_batch: list[dict[tuple[int, int], np.ndarray]] = [{} for _ in batches]
  for (index, row, segment, _, _), output in zip(keyed, outputs, strict=True):
    per_batch[index][(row, segment)] = output
  result = []
  for batch, batch_outputs in zip(batches, per_batch, strict=True):
    rows, length = batch['decoder_target_tokens'].shape
    packed = pack_decoder(batch_outputs, rows, length)
    if 'decoder_segment_ids' not in batch:  # unpacked stays unpacked
      packed = {k: v for k, v in packed.items() if k in batch}
    result.append({**batch, **packed})
  return result


def _chunk_path(directory: pathlib.Path, chunk: int) -> pathlib.Path:
  return directory / f'chunk_{chunk:05d}.npz'


def cached_generated_batches(directory: str | pathlib.Path, teacher: distill.Teacher,
                             make_batches: BatchFactory, first: int, num_batches: int, *,
                             progress: bool = True, eos_id: int = 1,
                             teacher_hidden: bool = False) -> BatchFactory:
  """`generated_batches` of the training batches `first .. first + num_batches - 1`, cached.

  Built chunk by chunk of `CHUNK_BATCHES` under `directory` (a run killed
  midway keeps its finished chunks); `spec.json` names the teacher and the
  batches, and a directory built for others is rebuilt. With `teacher_hidden`,
  each batch also carries `distill.TEACHER_HIDDEN`, computed once per chunk
  and cached beside it (`hidden_<chunk>.npy`).

  Returns:
    `make_batches(start)`: the generated batches `start, start + 1, ...` (0 is
    training batch `first`).
  """
  directory = pathlib.Path(directory)
  spec = {'teacher': paths.portable_path(teacher.checkpoint), 'first': first,
          'num_batches': num_batches, 'eos_id': eos_id, 'decode': 'greedy',
          'cap': f'min(reference * 3 // 2 + 4, {MAX_CAP})'}
  spec_path = directory / 'spec.json'
  if spec_path.is_file() and json.loads(spec_path.read_text()) != spec:
    shutil.rmtree(directory)
  directory.mkdir(parents=True, exist_ok=True)
  spec_path.write_text(json.dumps(spec, indent=1))
  num_chunks = -(-num_batches // CHUNK_BATCHES)
  todo = [c for c in range(num_chunks) if not _chunk_path(directory, c).is_file()]
  for chunk in tqdm.tqdm(todo, desc='target-generated batches', unit='chunk',
                         disable=not progress or not todo):
    started = time.perf_counter()
    start = chunk * CHUNK_BATCHES
    count = min(CHUNK_BATCHES, num_batches - start)
    sources = list(itertools.islice(make_batches(first + start), count))
    _save_chunk(directory, chunk, generated_batches(teacher, sources, eos_id=eos_id),
                time.perf_counter() - started)
  if teacher_hidden:
    _cache_teacher_hidden(directory, teacher, num_chunks, progress)
  return _chunk_reader(directory, num_batches, teacher_hidden)


def _hidden_path(directory: pathlib.Path, chunk: int) -> pathlib.Path:
  return directory / f'hidden_{chunk:05d}.npy'


def _cache_teacher_hidden(directory: pathlib.Path, teacher: distill.Teacher, num_chunks: int,
                          progress: bool) -> None:
  """Writes the teacher's hidden states `[batches, R, S, emb_dim]` of each chunk lacking them."""
  todo = [c for c in range(num_chunks) if not _hidden_path(directory, c).is_file()]
  for chunk in tqdm.tqdm(todo, desc='teacher hidden states', unit='chunk',
                         disable=not progress or not todo):
    started = time.perf_counter()
    stacked = _load_chunk(directory, chunk)
    hidden = np.stack([np.asarray(distill.teacher_hidden(
        teacher.config, teacher.params, {name: values[i] for name, values in stacked.items()}))
        for i in range(len(stacked['decoder_target_tokens']))])
    path = _hidden_path(directory, chunk)
    partial = path.with_suffix('.partial.npy')
    np.save(partial, hidden)
    path.with_suffix('.seconds').write_text(f'{time.perf_counter() - started:.3f}\n')
    partial.rename(path)


def generation_seconds(directory: str | pathlib.Path) -> float:
  """The seconds `cached_generated_batches` spent on the chunks now in `directory`.

  Decoding them, and computing their teacher hidden states where cached.
  """
  return sum(float(path.read_text()) for pattern in ('chunk_*.seconds', 'hidden_*.seconds')
             for path in pathlib.Path(directory).glob(pattern))


def _save_chunk(directory: pathlib.Path, chunk: int, batches: Sequence[Batch],
                seconds: float) -> None:
  stacked = {name: np.stack([batch[name] for batch in batches]) for name in batches[0]}
  partial = directory / f'chunk_{chunk:05d}.partial.npz'
  np.savez(partial, **stacked)
  _chunk_path(directory, chunk).with_suffix('.seconds').write_text(f'{seconds:.3f}\n')
  partial.rename(_chunk_path(directory, chunk))


def _load_chunk(directory: pathlib.Path, chunk: int) -> dict[str, np.ndarray]:
  """A cached chunk's features, each `[batches, R, ...]`."""
  with np.load(_chunk_path(directory, chunk)) as arrays:
    return {name: arrays[name] for name in arrays.files}


def _chunk_reader(directory: pathlib.Path, num_batches: int,
                  teacher_hidden: bool = False) -> BatchFactory:
  def make_batches(start: int) -> Iterator[dict[str, Any]]:
    for chunk in range(start // CHUNK_BATCHES, -(-num_batches // CHUNK_BATCHES)):
      stacked = _load_chunk(directory, chunk)
      if teacher_hidden:
        stacked[distill.TEACHER_HIDDEN] = np.load(_hidden_path(directory, chunk))
      for offset in range(len(stacked['decoder_target_tokens'])):
        if chunk * CHUNK_BATCHES + offset >= start:
          yield {name: values[offset] for name, values in stacked.items()}
  return make_batches


__all__ = ['DECODER_FEATURES', 'cap_for', 'segment_inputs', 'pack_decoder', 'greedy_outputs',
           'generated_batch', 'generated_batches', 'cached_generated_batches',
           'generation_seconds']
