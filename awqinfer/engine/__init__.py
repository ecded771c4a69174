"""The engine, in the order data flows. Each step and the file that holds it:

    a name -> a checkpoint directory        hub.py (local dirs, HF repos, Workers AI names, the default model)
    files -> config + arrays                checkpoint/ (config.py, safetensors.py, awq_layout.py, gguf.py)
    arrays -> weights in the kernel layout  model/linear.py, model/weights.py (memory.py: will they fit)
    ids -> logits                           model/forward.py (readable), model/fast_decode.py (compiled step)
    text -> ids, and back                   text/tokenizer.py, text/chat_template.py (rendered in text/sandbox.py
                                            under text/template_limits.py), text/detokenizer.py
    inputs -> a checked request             text/schema.py, text/inputs.py
    logits -> the next id                   text/sampling.py
    prompt -> a stream of ids               text/generate.py
    all of it behind one object             llm.py (LLM, load, run)
    building checkpoints (offline)          quant/ (rounding, calibration, awq_search, quantize)
"""
