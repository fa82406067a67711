"""The acceptance rule on its own: verify_draft, emitted_block and verified_betas on small cases."""

import jax
import jax.numpy as jnp
import numpy as np

from specdec_t5x import acceptance

EOS = 1


def one_hot(tokens, vocab=6):
  return jax.nn.one_hot(jnp.asarray(tokens), vocab, dtype=jnp.float32)


def test_greedy_accepts_while_draft_equals_target_argmax():
  # Target argmaxes per position: 3, 4, 5, 2; drafts agree on a prefix of 0, 1, 2 or 3 tokens.
  target = one_hot([[3, 4, 5, 2]] * 4)
  drafts = jnp.asarray([[0, 4, 5], [3, 0, 5], [3, 4, 0], [3, 4, 5]], jnp.int32)
  num, next_token = acceptance.verify_draft(jax.random.PRNGKey(0), target, one_hot(drafts),
                                            drafts, greedy=True)
  np.testing.assert_array_equal(num, [0, 1, 2, 3])
  # After n accepted tokens the target's own token at position n follows.
  np.testing.assert_array_equal(next_token, [3, 4, 5, 2])


def test_sampled_rule_keeps_tokens_with_p_at_least_q_and_rejects_p_zero():
  vocab = 4
  q = jnp.full((1, 2, vocab), 0.25)
  p_keep = jnp.asarray([[[0.1, 0.2, 0.3, 0.4], [0.0, 0.0, 1.0, 0.0], [0.25] * 4]])
  drafts = jnp.asarray([[3, 2]], jnp.int32)  # p(x) >= q(x) at both positions: always accepted
  for seed in range(20):
    num, _ = acceptance.verify_draft(jax.random.PRNGKey(seed), p_keep, q, drafts, greedy=False)
    assert int(num[0]) == 2
  p_reject = p_keep.at[0, 0].set(jnp.asarray([0.5, 0.5, 0.0, 0.0]))
  for seed in range(20):
    num, token = acceptance.verify_draft(jax.random.PRNGKey(seed), p_reject, q, drafts,
                                         greedy=False)
    # p(3) = 0: rejected at once; the residual max(0, p - q) puts all mass on 0 and 1.
    assert int(num[0]) == 0 and int(token[0]) in (0, 1)


def test_residual_after_rejection_follows_norm_max_p_minus_q():
  p = jnp.asarray([[[0.5, 0.3, 0.2, 0.0], [0.25] * 4]])
  q = jnp.asarray([[[0.1, 0.1, 0.8, 0.0]]])
  drafts = jnp.asarray([[2]], jnp.int32)
  counts = np.zeros(4)
  keys = jax.random.split(jax.random.PRNGKey(0), 4000)
  nums, tokens = jax.vmap(lambda k: acceptance.verify_draft(k, p, q, drafts, False))(keys)
  rejected = np.asarray(nums[:, 0]) == 0
  np.add.at(counts, np.asarray(tokens[:, 0])[rejected], 1)
  # Acceptance probability of token 2 is p/q = 0.25; the residual is (0.4, 0.2, 0, 0) / 0.6.
  assert abs(rejected.mean() - 0.75) < 0.03
  np.testing.assert_allclose(counts / counts.sum(), [2 / 3, 1 / 3, 0, 0], atol=0.03)


def test_emitted_block_cuts_after_eos_and_at_max_len_and_skips_done_rows():
  drafts = jnp.asarray([[5, EOS, 4], [5, 4, 3], [5, 4, 3], [5, 4, 3]], jnp.int32)
  num_accepted = jnp.asarray([3, 3, 1, 2], jnp.int32)
  next_token = jnp.asarray([2, 2, 2, 2], jnp.int32)
  lengths = jnp.asarray([0, 8, 0, 0], jnp.int32)
  done = jnp.asarray([False, False, False, True])
  block, num_new, ended = acceptance.emitted_block(drafts, num_accepted, next_token, lengths,
                                                   done, max_decode_len=10, eos_id=EOS)
  np.testing.assert_array_equal(num_new, [2, 2, 2, 0])
  np.testing.assert_array_equal(block, [[5, EOS, 0, 0], [5, 4, 0, 0], [5, 2, 0, 0],
                                        [0, 0, 0, 0]])
  np.testing.assert_array_equal(ended, [True, False, False, False])


def test_verified_betas_count_positions_up_to_the_first_rejection():
  p = one_hot([[3, 4, 5]])
  q = jnp.stack([one_hot([[3]])[0, 0], jnp.full((6,), 1 / 6)])[None]  # β = 1, then 1/6
  beta = acceptance.position_betas(p, q)
  beta_sum, beta_count = acceptance.verified_betas(beta, jnp.asarray([1]), jnp.asarray([2]))
  assert int(beta_count[0]) == 2 and abs(float(beta_sum[0]) - (1 + 1 / 6)) < 1e-6
  # A row cut by EOS / max_decode_len after its first token counts only that position.
  beta_sum, beta_count = acceptance.verified_betas(beta, jnp.asarray([1]), jnp.asarray([1]))
  assert int(beta_count[0]) == 1 and abs(float(beta_sum[0]) - 1.0) < 1e-6


def test_verify_greedy_on_token_ids_is_the_sampled_rule_on_one_hots():
  # On one-hot p and q the general rule is deterministic (accept iff p(x) = 1, the residual
  # is p's one-hot), so it must give exactly what the token-id rule gives.
  rng = np.random.default_rng(0)
  for _ in range(20):
    target = rng.integers(0, 4, size=(5, 4)).astype(np.int32)   # [B, γ+1], few ids: many agree
    drafts = rng.integers(0, 4, size=(5, 3)).astype(np.int32)
    num, token, beta = acceptance.verify_greedy(target, drafts)
    p, q = one_hot(target), one_hot(drafts)
    want_num, want_token = acceptance.verify_draft(jax.random.PRNGKey(0), p, q, drafts, False)
    np.testing.assert_array_equal(num, want_num)
    np.testing.assert_array_equal(token, want_token)
    np.testing.assert_array_equal(beta, acceptance.position_betas(p, q))
