"""The cheap-draft benchmark: α along the target's outputs, the speed runs, the report."""

import json
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from specdec_t5x import decoding, drafters, network, paths, sampling
from specdec_t5x.bench import cheap_drafts, cheap_drafts_report, random_weights, report
from specdec_t5x.drafters import lookahead
from specdec_t5x.training import ngram_counts

TINY = network.T5Config(vocab_size=64, emb_dim=16, num_heads=2, num_encoder_layers=1,
                        num_decoder_layers=1, head_dim=8, mlp_dim=32, dtype=jnp.float32)


@pytest.fixture(scope='module')
def setup():
  module = network.Transformer(TINY)
  params = random_weights.random_params(module, 1, 6, seed=0)
  rng = np.random.default_rng(0)
  examples = {'inputs': rng.integers(2, 64, (8, 6)).astype(np.int32)}
  targets = rng.integers(2, 64, (16, 10)).astype(np.int32)
  targets[:, -1] = 1  # EOS
  counts = ngram_counts.count_ngrams([targets], 64)
  ngram = {'unigram': drafters.UnigramDrafter.from_counts(counts),
           'bigram': drafters.BigramDrafter.from_counts(counts)}
  pass_drafter = lookahead.PassDrafter.create(module, lookahead.init_lookahead(params, 2))
  return module, params, examples, ngram, pass_drafter


def test_greedy_alpha_is_the_rate_of_agreeing_argmaxes(setup):
  module, params, examples, ngram, pass_drafter = setup
  outputs = decoding.autoregressive_decode(module, params, examples['inputs'], max_decode_len=6)
  alpha = cheap_drafts.measure_alpha(module, params, examples, outputs, ngram,
                                     pass_drafter.lookahead, sampling.make_sampling_config(0.0))
  tokens, lengths = np.asarray(outputs.tokens), np.asarray(outputs.lengths)
  valid = np.arange(tokens.shape[1])[None, :] < lengths[:, None]
  # At T=0 β is 1 where the draft's argmax is the target's token, else 0.
  unigram_choice = int(np.argmax(np.asarray(ngram['unigram'].log_probs)))
  assert alpha['positions'] == int(valid.sum())
  assert alpha['unigram'] == pytest.approx(np.mean(tokens[valid] == unigram_choice))
  previous = np.pad(tokens[:, :-1], ((0, 0), (1, 0)))
  bigram_choice = np.argmax(np.asarray(ngram['bigram'].next_log_probs(
      jnp.asarray(previous.reshape(-1)))), axis=-1).reshape(tokens.shape)
  assert alpha['bigram'] == pytest.approx(np.mean((tokens == bigram_choice)[valid]))
  assert len(alpha['pass']) == 2 and all(0.0 <= a <= 1.0 for a in alpha['pass'])
  assert alpha['pass_positions'][0] >= alpha['pass_positions'][1]


def test_measure_task_and_report_on_a_tiny_model(setup, tmp_path, monkeypatch):
  module, params, examples, ngram, pass_drafter = setup
  monkeypatch.setenv(paths.CACHE_ENV, str(tmp_path))
  monkeypatch.setattr(cheap_drafts, 'TASKS', {'summarize': dict(
      cheap_drafts.TASKS['summarize'], max_decode_len=6)})
  monkeypatch.setattr(sys, 'argv', ['scripts/measure_cheap_drafts.py', '--tasks', 'summarize'])
  settings = cheap_drafts.Settings(temperatures=(0.0, 1.0), alpha_examples=8, speed_examples=1,
                                   rounds=1, pass_gammas=(1,), seed=0)
  result = cheap_drafts.measure_task(
      'summarize', module, params, examples, ngram, pass_drafter,
      counts_path=tmp_path / 'ngram' / 'x.npz', pass_file=tmp_path / 'pass.npz', curve=None,
      settings=settings)
  assert result['counts'] == '{cache}/ngram/x.npz' and result['pass_file'] == '{cache}/pass.npz'
  greedy = result['speed']['0.0']
  assert list(greedy) == ['autoregressive', 'unigram', 'bigram', 'PaSS γ=1']
  # Exactness: at T=0 every draft gives the target's own tokens.
  assert all(entry['identical_to_autoregressive'] for name, entry in greedy.items()
             if name != 'autoregressive')
  assert greedy['autoregressive']['speedup_median'] == pytest.approx(1.0)
  assert all(0.0 <= entry['loop_alpha'] <= 1.0 for name, entry in greedy.items()
             if name != 'autoregressive')
  args_settings = dict(family='default', family_config='configs/family.json',
                       tasks=['summarize'], temperatures=[0.0, 1.0], alpha_examples=8,
                       speed_examples=1, rounds=1, smoothing=0.01, pass_gammas=[1],
                       output_dir=paths.portable_path(tmp_path / 'out'))
  record = cheap_drafts_report.build_report(
      {'summarize': result}, target_label='tiny', pass_file_info={'num_steps': 1},
      settings=args_settings, curve=[1.0, 1.3, 1.5], started=0.0)
  cheap_drafts_report.write_report(tmp_path / 'out', record)
  written = json.loads((tmp_path / 'out' / 'cheap_drafts.json').read_text())
  assert report.absolute_paths(written) == []
  text = (tmp_path / 'out' / 'cheap_drafts.md').read_text()
  assert '## PaSS: α per look-ahead position' in text and '| j=1 | j=2 |' in text
  assert 'K=1: 1.00, K=2: 1.30, K=3: 1.50' in text


def test_alpha_table_sits_next_to_the_papers_table3():
  alpha = {'0.0': {'unigram': 0.05, 'bigram': 0.25}, '0.5': {'unigram': 0.04, 'bigram': 0.2}}
  record = {'settings': {'temperatures': [0.0, 0.5]},
            'tasks': {'ende': {'label': 'DDTP ende', 'alpha': alpha}}}
  assert cheap_drafts_report.alpha_rows(record) == [
      ['DDTP ende', 'unigram', '0.050', '0.040', '0.08', '-'],
      ['DDTP ende', 'bigram', '0.250', '0.200', '0.20', '-']]


def test_speed_methods_pick_ngram_gamma_from_theory():
  alpha = {'unigram': 0.0, 'bigram': 0.9}
  methods = cheap_drafts.speed_methods(alpha, {'unigram': 'u', 'bigram': 'b'}, None, (1,),
                                       curve=[1.0, 1.0, 1.0])
  assert methods['autoregressive'] is None and 'PaSS γ=1' not in methods
  assert methods['bigram'] == ('b', 2)  # capped by the measured curve's K=3
  assert methods['unigram'][1] >= 1


def test_scoring_cost_curve_reads_the_preset(tmp_path):
  path = tmp_path / 'scoring_cost.json'
  path.write_text(json.dumps({'results': [{'preset': 'a', 'ratio_median': [1.0, 1.5]}]}))
  assert cheap_drafts.scoring_cost_curve('a', path) == [1.0, 1.5]
  assert cheap_drafts.scoring_cost_curve('b', path) is None
  assert cheap_drafts.scoring_cost_curve(None, path) is None
  assert cheap_drafts.scoring_cost_curve('a', tmp_path / 'absent.json') is None

