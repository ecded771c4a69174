"""The kernels' fast-math flags: those under which Numba's cached code computes what fresh code does.

A kernel runs as compiled in the process that compiled it, and as loaded from Numba's on-disk
cache in every process after. With the full ``fastmath=True`` set the two disagreed in the last
bits. The likely reason (not traced into Numba): the code written to the cache, and a callee
linked into its caller, pass through LLVM's optimiser once more, and the flags that allow more
than reordering leave it room to choose differently the second time. Measured on
this machine, reassociation together with ``arcp`` (a division as a multiply by a reciprocal)
or with ``nnan``/``ninf``/``nsz`` made ``attention`` (a parallel kernel) differ by 1-4e-7 between
a cold and a warm cache, and ``rmsnorm``'s ``1/sqrt`` differ inside ``decode_batch``. Through 30
layers that moved the default model's logits by up to 0.2, enough to flip a near-tie greedy token,
and the quantizer (which calibrates each layer on the rounded layers before it) built a different
model on a cold cache than on a warm one.

What makes the kernels fast is kept: reassociation (vectorised sums), contraction (FMA) and
approximate library functions (``exp``); docs/PERFORMANCE.md item 10 has the measurements.
tests/test_numba_cache.py runs prefill and decode in a cold and then a warm process, bit for bit.
"""

FASTMATH = {"reassoc", "contract", "afn"}  # a set: the form numba's ``fastmath=`` takes
