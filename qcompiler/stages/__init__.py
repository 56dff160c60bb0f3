"""The pipeline's stages, one module each, as DESIGN.md names them: capture, prepare, calibrate, convert, lower,
package (and load); ``quantize`` composes the first four; ``report`` reads what they wrote.

The functions are re-exported by ``qcompiler`` (``qc.capture``, ``qc.lower``, ...); this package re-exports
nothing, so ``qcompiler.stages.lower`` is always the module, never the function.
"""
