"""How logits are computed: arrays -> logits.

    linear.py       Dense / AWQ / int8 linears, drop-in objects with one call; the embedding
    weights.py      a checkpoint's tensors -> ModelWeights (checked, fused, stacked over layers)
    rope.py         RoPE frequencies and each position's cos/sin
    cache.py        the KV cache of one sequence
    backend.py      the kernels the forward calls (CPU); device.py picks one, cuda.py is the GPU's
    forward.py      Model: the readable forward pass (decoder_layer), the reference
    fast_decode.py  the same single-token step compiled in one call (kernels/decode.py)
    lora.py         PEFT LoRA adapter files -> checked A/B matrices fused like the projections
    adapters.py     a model's adapters by name, stacked for both paths (kernels/lora.py)
"""

from .forward import Model

__all__ = ["Model"]
