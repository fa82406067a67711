"""The timing harness: interleaving, pairing, chained calls that compute what single calls do."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specdec_t5x import cache as cache_lib
from specdec_t5x import drafters, network, sampling
from specdec_t5x.bench import machine, random_weights, timing

TINY = network.T5Config(vocab_size=64, emb_dim=16, num_heads=2, num_encoder_layers=1,
                        num_decoder_layers=1, head_dim=8, mlp_dim=32, dtype=jnp.float32)


@pytest.fixture(scope='module')
def tiny():
  module = network.Transformer(TINY)
  params = random_weights.random_params(module, 1, 6, seed=0)
  tokens = jnp.asarray(np.random.default_rng(0).integers(2, 64, (2, 6)), jnp.int32)
  return module, params, tokens


def test_interleaved_rounds_runs_each_entry_once_per_round_in_varying_orders():
  log = []
  runs = {name: (lambda name=name: log.append(name) or float(len(log))) for name in 'abc'}
  samples = timing.interleaved_rounds(runs, rounds=6, seed=0)
  assert {name: len(values) for name, values in samples.items()} == {'a': 6, 'b': 6, 'c': 6}
  orders = {tuple(log[i:i + 3]) for i in range(0, 18, 3)}
  assert all(sorted(order) == ['a', 'b', 'c'] for order in orders)
  assert len(orders) > 1  # the order is shuffled per round


def test_paired_ratios_and_quantiles():
  ratios = timing.paired_ratios({'ref': [1.0, 2.0, 4.0], 'x': [2.0, 2.0, 2.0]}, 'ref')
  np.testing.assert_allclose(ratios['x'], [2.0, 1.0, 0.5])
  assert timing.quantiles([1.0, 2.0, 3.0]) == {'median': 2.0, 'q25': 1.5, 'q75': 2.5}


def test_calls_for_sizes_samples():
  assert timing.calls_for(lambda calls: 0.001 * calls, sample_s=0.05) == 50
  assert timing.calls_for(lambda calls: 1.0, sample_s=0.05) == 1


def test_chained_target_calls_feed_each_call_the_last_argmax(tiny):
  module, params, tokens = tiny
  encoded, cache = timing.target_cache(module, params, tokens, 16)
  positions = jnp.full((2,), 3, jnp.int32)
  start = jnp.full((2, 2), 5, jnp.int32)
  expected = start
  for _ in range(3):
    logits, _ = cache_lib.decode_step(module, params, cache_lib.rewind(cache, positions),
                                      encoded, tokens, expected)
    expected = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  got = timing.chained_target_calls(module, params, cache, encoded, tokens, start, positions,
                                    jnp.int32(3))
  np.testing.assert_array_equal(got, expected)


def test_scoring_costs_and_step_costs_records(tiny):
  module, params, tokens = tiny
  record = timing.scoring_costs(module, params, tokens, [1, 2, 3], prefix=2, cache_length=8,
                                rounds=2, sample_ms=1, seed=0)
  assert record['k'] == [1, 2, 3] and record['ratio_median'][0] == 1.0
  assert all(len(samples) == 2 for samples in record['samples_ms'])
  with pytest.raises(ValueError, match='cache_length'):
    timing.scoring_costs(module, params, tokens, [1, 8], prefix=2, cache_length=8, rounds=1,
                         sample_ms=1, seed=0)
  draft = drafters.ModelDrafter(module, params)
  costs = timing.step_costs(module, params, draft, np.asarray(tokens), np.full((2, 5), 7),
                            gamma=2, sampling=sampling.make_sampling_config(), max_decode_len=5,
                            cache_length=9, rounds=2, sample_ms=1, prefix=2, seed=0)
  assert costs['scored_positions'] == 3 and costs['c'] > 0 and costs['scoring_cost'] > 0
  assert set(costs['step_calls_per_sample']) == {'step', 'score', 'propose', 'setup',
                                                 'draft_setup'}
  # Both set-ups are timed, in target steps (how many steps they cost is measured, not asserted:
  # on this 16-wide model the encoder pass and a decoder step are both mostly dispatch).
  assert costs['setup_steps'] > 0 and costs['draft_setup_steps'] > 0


def test_random_weights_ban_eos_and_count(tiny):
  module, params, tokens = tiny
  banned = random_weights.ban_eos(params)
  assert not np.any(np.asarray(banned['decoder']['logits_dense']['kernel'])[:, 1])
  assert random_weights.decoder_param_count(params) == sum(
      leaf.size for leaf in jax.tree_util.tree_leaves(params['decoder']))


def test_command_line_names_no_absolute_path(monkeypatch):
  from specdec_t5x import paths
  script = paths.repo_root() / 'scripts' / 'sweep.py'
  command = machine.command_line(argv=[str(script), '--dry-run'])
  assert 'scripts/sweep.py --dry-run' in command and str(paths.repo_root()) not in command
  facts = machine.machine_facts()
  assert facts['nproc'] >= 1 and facts['jax_backend'] == jax.default_backend()


def test_cpu_vector_isa_reads_the_widest_flag(tmp_path):
  cpuinfo = tmp_path / 'cpuinfo'
  cpuinfo.write_text('model name\t: AMD EPYC\nflags\t\t: fpu sse4_2 avx avx2 fma\n')
  assert machine.cpu_vector_isa(cpuinfo) == 'avx2'
  cpuinfo.write_text('flags\t\t: avx2 avx512f avx512bw\n')
  assert machine.cpu_vector_isa(cpuinfo) == 'avx512f'
  cpuinfo.write_text('processor\t: 0\n')
  assert machine.cpu_vector_isa(cpuinfo) == 'unknown'
  assert machine.cpu_vector_isa(tmp_path / 'absent') == 'unknown'


def test_vector_and_cache_names_what_the_record_holds():
  facts = {'cpu_vector_isa': 'avx512f', 'l3_cache_mb': 32.0}
  assert machine.vector_and_cache(facts) == ', AVX512, 32 MB L3'
  assert machine.vector_and_cache({'cpu_vector_isa': 'avx2', 'l3_cache_mb': 0.0}) == ', AVX2'
  assert machine.vector_and_cache({}) == ''  # records from before these facts were kept
