"""Where the weights come from: checkpoint files -> a config and named arrays, no compute.

    config.py        config.json (+ generation_config.json) -> ModelConfig, RopeConfig, QuantConfig
    safetensors.py   model.safetensors (single or sharded) -> memory-mapped arrays; ShardWriter writes them
    awq_layout.py    AutoAWQ's on-disk 4-bit packing: pack_awq / unpack_awq and the nibble order
    gguf.py          a llama.cpp GGUF file -> a Hugging Face checkpoint directory
"""
