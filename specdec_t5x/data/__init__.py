"""Real data: the DDTP tasks (TFDS + seqio), their sentencepiece vocabulary, the paper's tasks.

Import `specdec_t5x.data.tasks` to register the seqio tasks; `ddtp` and `vocab` need no TensorFlow.
"""
