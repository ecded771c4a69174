"""The fast-math flags under which Numba's cached code computes what freshly compiled code does.

A kernel runs as compiled in the process that compiled it, and as loaded from Numba's on-disk
cache in every process after. With the full ``fastmath=True`` set the two disagreed in the last
bits. The likely reason (not traced into Numba): the body of a ``parallel=True`` kernel, and a
callee linked into its caller, pass through LLVM's optimiser once more for the cache, and the
flags that allow more than reordering leave it room to choose differently the second time.
Measured on this machine: reassociation together with ``arcp`` (a division as a multiply by a
reciprocal) or with ``nnan``/``ninf``/``nsz`` made ``attention`` (parallel) differ by 1-4e-7
between a cold and a warm cache, and ``rmsnorm``'s ``1/sqrt`` differ inside ``decode_batch``.
Through 30 layers that moved the default model's logits by up to 0.3, enough to flip a near-tie
greedy token, and the quantizer (which calibrates each layer on the rounded layers before it)
built a different model on a cold cache than on a warm one.

So every ``parallel=True`` kernel and ``rmsnorm`` take FASTMATH: reassociation (vectorised sums),
contraction (FMA) and approximate library functions (``exp``), nothing more. Serial kernels keep
``fastmath=True``; their cached code equals their fresh code. Putting every kernel on FASTMATH
made the decode step ~20% slower (the integer-dot row kernels in qdot.py), hence the split;
docs/PERFORMANCE.md item 18 has the measurements. tests/test_numba_cache.py runs prefill and
decode in a cold and then a warm process, bit for bit, and so keeps this choice honest.
"""

FASTMATH = {"reassoc", "contract", "afn"}  # a set: the form numba's ``fastmath=`` takes
