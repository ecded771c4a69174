"""Benchmarks: awqinfer side by side with llama.cpp, each through its own loop (see run.py).

    run.py          the run: phases, interleaved repeats, RESULTS.md / results.json
    worker.py       one engine per process; engines.py the engines it can hold
    llama_tools.py  llama.cpp's own programs (llama-bench, llama-batched-bench); build_llama_cpp.sh builds them
    measure.py      prompts, bandwidth, fresh-process time to first token, the busy neighbour
    synth.py        the 7B-shaped AWQ checkpoint; report.py the tables and targets
"""
