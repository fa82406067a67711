"""The loop tracer: op names from compiled HLO, the loop's events by part, and a real trace."""

import numpy as np
import pytest
from conftest import init_params, random_inputs

from specdec_t5x import drafters, network
from specdec_t5x.bench import loop_trace

SCORE_OP = 'jit(decode)/while/body/score/Transformer.decode/attention/dot_general'
DRAFT_OP = 'jit(decode)/while/body/draft/Transformer.decode/logits_dense/ffi_call'
HLO = f"""
%fused_computation.5 (param_0: f32[4,3], param_1: f32[4,3]) -> f32[4,3] {{
  %param_0 = f32[4,3]{{1,0}} parameter(0)
  %param_1 = f32[4,3]{{1,0}} parameter(1)
  ROOT %multiply.2 = f32[4,3]{{1,0}} multiply(%param_0, %param_1)
}}

%fused_computation.3 (param_0: f32[4,3]) -> f32[4,3] {{
  %param_0 = f32[4,3]{{1,0}} parameter(0)
  ROOT %dot.9 = f32[4,3]{{1,0}} dot(%param_0, %param_0), metadata={{op_name="{SCORE_OP}"}}
}}

ENTRY %main (p: f32[4,3]) -> f32[4,3] {{
  %p = f32[4,3]{{1,0}} parameter(0)
  %ynn_fusion.3 = f32[4,3]{{1,0}} fusion(%p), kind=kCustom, calls=%fused_computation.3
  %ffi_call.7 = f32[4,3]{{1,0}} custom-call(%ynn_fusion.3), metadata={{op_name="{DRAFT_OP}" x=3}}
  %fusion.4 = f32[4,3]{{1,0}} fusion(%ffi_call.7, %p), kind=kLoop, calls=%fused_computation.5
  ROOT %add.1 = f32[4,3]{{1,0}} add(%p, %p)
}}
"""


def test_compiled_op_names_reads_metadata_else_the_called_computation_else_an_operand():
  names = loop_trace.compiled_op_names(HLO)
  assert names['ffi_call.7'] == DRAFT_OP
  assert names['ynn_fusion.3'] == SCORE_OP   # from the computation it calls
  assert names['fusion.4'] == DRAFT_OP       # from its first operand with one
  assert names['add.1'] == ''


@pytest.mark.parametrize('op_name, part', [
    ('jit(decode)/while/body/draft/while/body/closed_call/Transformer.decode/x', 'draft'),
    ('jit(decode)/while/body/score/Transformer.decode/decoder/logits_dense/ffi_call', 'score'),
    ('jit(decode)/while/body/accept/add', 'accept'),
    ('jit(decode)/while/body/scoreboard/add', 'other'),
    ('', 'other')])
def test_part_of_reads_the_named_scope(op_name, part):
  assert loop_trace.part_of(op_name) == part


def _event(name, ts, dur, tid=1):
  return dict(ph='X', name=name, ts=ts, dur=dur, tid=tid)


def test_loop_breakdown_counts_only_the_loops_events_and_the_gap_between_them():
  names = {'while.5': '', 'while.9': '', 'a': 'jit(f)/while/body/score/x',
           'b': 'jit(f)/while/body/draft/y', 'c': 'jit(f)/z'}
  events = [
      _event('while.5', 0, 100), _event('while.5', 200, 100),  # the loop: 200 µs in all
      _event('while.9', 10, 20),  # a nested loop: a container, never counted itself
      _event('a', 5, 40), _event('b', 50, 30), _event('a', 210, 60),
      _event('c', 150, 30),  # between the loop's runs: not the loop's
      _event('ThunkExecutor::Execute', 0, 300)]
  breakdown = loop_trace.loop_breakdown(events, names, iterations=2)
  assert breakdown['loop'] == 'while.5'
  assert breakdown['loop_us'] == 100.0
  assert breakdown['ops_us'] == {'score': 50.0, 'draft': 15.0}
  assert breakdown['ops_per_iteration'] == 1.5
  assert breakdown['gap_us'] == 35.0
  assert [op['hlo'] for op in breakdown['top_ops']] == ['a', 'b']


def test_a_loop_whose_while_event_ends_before_its_body_spans_its_body_on_any_thread():
  # With sampling, XLA:CPU's `while` event can end at once while its body runs on.
  names = {'while.2': 'jit(f)/while', 'while.7': 'jit(f)/while/body/draft/while',
           'a': 'jit(f)/while/body/score/x', 'b': 'jit(f)/while/body/draft/while/body/y',
           'c': 'jit(f)/z'}
  events = [
      _event('while.2', 0, 5), _event('while.2', 300, 5),
      _event('while.7', 20, 60),  # nested, and recorded longer than the outer loop's events
      _event('a', 10, 40), _event('b', 60, 30),
      _event('c', 150, 20),  # the program goes on past its loop: the run has ended
      _event('a', 280, 5),  # so a loop op after it (another request's copy) is not this run's
      _event('a', 310, 50, tid=2)]  # the body goes on on another thread
  breakdown = loop_trace.loop_breakdown(events, names, iterations=2)
  assert breakdown['loop'] == 'while.2'
  assert breakdown['loop_us'] == (90 + 60) / 2  # each run ends with its body's last event
  assert breakdown['ops_us'] == {'score': 45.0, 'draft': 15.0}
  assert breakdown['gap_us'] == 15.0


def test_loop_breakdown_keeps_to_its_module_in_a_shared_trace():
  names = {'while.1': '', 'a': 'jit(f)/while/body/score/x'}
  mine, other = dict(hlo_module='jit_mine'), dict(hlo_module='jit_other')
  events = [dict(_event('while.1', 0, 100), args=mine), dict(_event('a', 10, 50), args=mine),
            dict(_event('while.1', 200, 300), args=other), dict(_event('a', 210, 90), args=other)]
  breakdown = loop_trace.loop_breakdown(events, names, iterations=1, module='jit_mine')
  assert breakdown['loop_us'] == 100.0 and breakdown['ops_us'] == {'score': 50.0}
  assert loop_trace.module_name('HloModule jit_mine, entry_computation_layout={}') == 'jit_mine'


def test_a_loop_that_holds_little_of_its_decoders_wall_time_is_refused():
  breakdown = dict(loop_us=10.0)
  loop_trace._check_coverage(breakdown, iterations=4, wall_us=150.0, decoder='speculative')
  with pytest.raises(ValueError, match='speculative loop for only 10% of its wall time'):
    loop_trace._check_coverage(breakdown, iterations=1, wall_us=100.0, decoder='speculative')


def test_loop_breakdown_without_a_loop_says_so():
  with pytest.raises(ValueError, match='no while loop'):
    loop_trace.loop_breakdown([_event('a', 0, 1)], {'a': ''}, iterations=1)


def test_trace_loops_attributes_a_real_speculative_loop(tiny_config, tmp_path):
  module = network.Transformer(tiny_config)
  params = init_params(tiny_config, seed=0)
  drafter = drafters.ModelDrafter(module, params)  # the target drafting for itself
  requests = [random_inputs(1, 8, tiny_config.vocab_size, seed) for seed in range(2)]
  traced = loop_trace.trace_loops(module, params, drafter, requests, tmp_path, gamma=2,
                                  max_decode_len=12, eos_id=1)
  assert traced['greedy_identical'] is True
  spec, ar = traced['speculative'], traced['autoregressive']
  # Every draft is accepted: 3 tokens an iteration until the last.
  assert 1.5 < traced['tokens_per_iteration'] <= 3.0
  assert spec['ops_us']['score'] > 0 and spec['ops_us']['draft'] > 0
  assert 'draft' not in ar['ops_us'] and ar['loop_us'] > 0
  assert spec['ops_per_iteration'] > ar['ops_per_iteration']
  record = dict(command='python scripts/trace_loop.py', date='2026-01-01', machine_summary='CPU',
                load_average_1min=1.0, settings=dict(task='t', draft='d', gamma=2,
                                                     temperature=0.0, passes=2),
                requests=2, input_length=8, **traced)
  loop_trace.write_report(tmp_path, record)
  text = (tmp_path / 'loop_trace.md').read_text()
  assert '| speculative, γ = 2 |' in text and 'autoregressive steps' in text


def test_trace_loops_rejects_requests_of_several_shapes(tiny_config, tmp_path):
  module = network.Transformer(tiny_config)
  with pytest.raises(ValueError, match='one shape'):
    loop_trace.trace_loops(module, None, None, [np.ones((1, 8), np.int32),
                                                np.ones((1, 16), np.int32)], tmp_path,
                           gamma=1, max_decode_len=4)
