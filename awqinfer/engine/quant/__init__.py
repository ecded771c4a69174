"""How checkpoints are made (build time only): a float checkpoint -> an AWQ 4-bit one.

    rounding.py      4-bit round-to-nearest per group, and AutoAWQ's tensors of one linear
    calibration.py   the built-in calibration text, cut into token windows
    awq_search.py    AWQ's per-channel scales and clipping, searched one layer at a time
    quantize.py      the whole pass: layer by layer, written in AutoAWQ's "gemm" layout
"""
