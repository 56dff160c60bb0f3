"""Graph passes over the ATen graph (annotate, observe, fold, rewrite) and the
algorithms that choose quantized values. Filled in by the front-end work."""
