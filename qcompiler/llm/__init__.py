"""Decoder LLMs: ``capture_lm`` (prefill and decode in one program, the KV cache as state), attention by kv
head while it traces (``gqa_attention``), and ``generate`` / ``stream`` over a captured or packaged program.

The functions are re-exported by ``qcompiler``; this package re-exports nothing (its modules stay reachable).
"""
