"""specdec_t5x: exact speculative decoding for T5 / T5X in one jitted `lax.while_loop`."""

__version__ = '0.1.0'
