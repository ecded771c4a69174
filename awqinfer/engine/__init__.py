"""The engine: checkpoint -> weights -> forward -> logits -> sampler -> tokens -> text."""
