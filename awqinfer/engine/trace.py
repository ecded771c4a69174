"""The trace of one generation: what happens to each token on its way through the model, with real numbers.

``trace(llm, inputs)`` runs Workers AI ``inputs`` (as ``LLM.run`` takes them) through the
very steps ``run`` takes (text/generate.py's Sequence: the same prompt ids, sampling
parameters, seeded generator and stop tokens) with an observer attached, so every forward
goes through the readable ``decoder_layer`` (model/forward.py) and every sampling step of
text/sampling.py is seen. It records:

    the prompt      the chat template's output, the ids and their vocabulary pieces
    each forward    a Step: per layer the residual stream's norm entering, after the attention
                    block and leaving, the strongest positions of a few heads' attention, the
                    layer's time, its weights' format and bytes; the lm_head's time; for a
                    generated token also the compiled decode step's time and how far its
                    logits are from the readable forward's (Model.forward runs both)
    each token      every sampling step's top candidates (probabilities before and after it),
                    the token drawn, the text the streaming detokenizer lets out, the KV cache's
                    fill and memory

Norms and attention are those of each forward's last row, the one whose logits are sampled.
Times exclude the trace's own work: a layer's time is the sum of the intervals between
its observations, and the kernels are compiled (or loaded from Numba's cache) before the
first step is timed. One piece is instrumentation, not the model: the attention kernel
does not hand out its probabilities, so ``_Recorder._attention`` computes
softmax(q k^T / sqrt(D)) for the reported heads from the rotated q that the layer shows and
the keys it has just written to the cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from time import perf_counter

import numpy as np

from ..errors import InputError
from .checkpoint.config import ModelConfig
from .model.linear import AwqLinear, HalfLinear, Int8Linear, Linear
from .text.generate import Sequence, check_prompt
from .text.inputs import parse_inputs
from .text.sampling import SamplingParams, softmax

TOP = 5  # candidates shown per sampling step, and strongest positions per head
MAX_HEADS = 8  # heads whose attention a trace may report
MAP_POSITIONS = 96  # the attention maps cover the first MAP_POSITIONS positions of the sequence
FINAL_STEPS = ("softmax", "greedy")  # sampling steps whose output is the distribution drawn from


@dataclass
class Candidate:
    """One token of a sampling step's top: its probability after the step, and its logit (None after softmax)."""

    token: int
    prob: float
    logit: float | None


@dataclass
class SamplingStep:
    """The distribution after one function of text/sampling.py, named after it."""

    name: str
    setting: str  # the parameters it applied, e.g. "temperature 0.6"
    active: bool  # False: the step was off and returned its input as it was
    kept: int  # tokens with a probability above 0
    top: list[Candidate]


@dataclass
class LayerTrace:
    """One decoder layer during one forward, as its last row saw it."""

    index: int
    norm_in: float  # |x| entering the layer
    norm_mid: float  # after the attention block (x + o_proj(attention))
    norm_out: float  # leaving, after the MLP block
    seconds: float  # compute time, the trace's own work excluded
    attention: dict[int, list[tuple[int, float]]]  # head -> strongest (position, probability)


@dataclass
class KVState:
    """The sequence's KV cache after a forward (model/cache.py)."""

    positions: int  # filled
    capacity: int  # the most it may hold (prompt + max_tokens - 1, at most the context)
    allocated: int  # positions its arrays hold now (grown in blocks)
    nbytes: int  # bytes allocated now
    reserved: int  # bytes reserved in the process's KV budget (its worst case)
    bytes_per_position: int


@dataclass
class Step:
    """One forward of the model (a prompt chunk, or one generated token) and the token sampled from it."""

    kind: str  # "prefill" or "decode"
    start: int  # position of its first row
    ids: list[int]  # the tokens it read
    layers: list[LayerTrace] = field(default_factory=list)
    head_seconds: float = 0.0  # final norm and lm_head
    readable_top: list[Candidate] = field(default_factory=list)  # the readable lm_head's top (softmax)
    compiled_seconds: float | None = None  # the compiled step over the same token (None: it did not run)
    compiled_diff: float | None = None  # max |logit| difference of the compiled step from the readable forward
    compiled_top_diff: float | None = None  # the same over the readable top's tokens
    sampling: list[SamplingStep] = field(default_factory=list)  # empty: a prompt chunk before the last
    token: int | None = None  # the token drawn
    token_prob: float | None = None  # its probability in the distribution drawn from
    token_rank: int | None = None  # 1: the most likely token
    text: str = ""  # what the streaming detokenizer let out for it
    finish_reason: str | None = None
    kv: KVState | None = None

    @property
    def seconds(self) -> float:
        """The forward's compute time: its layers and the lm_head."""
        return sum(layer.seconds for layer in self.layers) + self.head_seconds

    @property
    def compiled_note(self) -> str:
        """Where this step's sampled logits come from, in words (the reports print it)."""
        if self.compiled_seconds is None:
            return "sampled from the readable forward's logits, as run does for a prompt"
        return (f"then the compiled decode step, as run takes this token: {self.compiled_seconds * 1e3:.2f} ms, "
                f"its logits within {self.compiled_diff:.2g} of the readable ones ({self.compiled_top_diff:.2g} on "
                f"their top {len(self.readable_top)}); sampled from them")


@dataclass
class WeightInfo:
    """What a forward reads of one part of the model."""

    name: str  # "layer 0", ..., "lm_head"
    format: str
    nbytes: int


@dataclass
class Trace:
    """Everything ``trace`` saw; cli/trace.py prints it and writes it as an HTML page."""

    model: str
    config: ModelConfig
    params: SamplingParams
    kv_dtype: str
    template: str | None  # the chat template's output; None for a raw prompt
    prompt_ids: list[int]
    pieces: dict[int, str]  # every id that appears -> its vocabulary piece
    heads: tuple[int, ...]  # the query heads whose attention is reported
    weights: list[WeightInfo]  # one per layer, then the lm_head
    steps: list[Step]
    maps: np.ndarray  # (L, len(heads), N, N) f32: attention of the first N positions (row: query)
    response: str = ""
    finish_reason: str | None = None

    @property
    def sequence(self) -> list[int]:
        """Every token by position: the prompt, then each token drawn."""
        return self.prompt_ids + [s.token for s in self.steps if s.token is not None]

    def piece(self, token: int) -> str:
        """The vocabulary piece of a token id ('<id 600>' past the tokenizer's vocabulary: a padded row)."""
        return self.pieces.get(token, f"<id {token}>")


def default_heads(config: ModelConfig) -> tuple[int, ...]:
    """The first query head of each KV head (GQA group), at most four: heads that read different keys."""
    group = config.num_attention_heads // config.num_key_value_heads
    return tuple(range(0, config.num_attention_heads, group))[:4]


def check_heads(heads, config: ModelConfig) -> tuple[int, ...]:
    """``heads`` as a tuple of distinct query head indices (None: ``default_heads``), else an InputError."""
    if heads is None:
        return default_heads(config)
    n = config.num_attention_heads
    values = list(heads) if isinstance(heads, (list, tuple)) else None
    if not values or len(values) > MAX_HEADS or len(set(values)) != len(values) or \
            not all(isinstance(h, int) and not isinstance(h, bool) and 0 <= h < n for h in values):
        raise InputError(f"heads: got {heads!r}; allowed: 1..{MAX_HEADS} distinct query heads in 0..{n - 1}")
    return tuple(values)


def weight_format(linear: Linear) -> str:
    """How a Linear holds its weights, in words."""
    if isinstance(linear, AwqLinear):
        return f"AWQ 4-bit, group {linear.in_features // linear.scales.shape[1]}"
    if isinstance(linear, Int8Linear):
        return "int8, one scale per row"
    if isinstance(linear, HalfLinear):
        return f"{'bfloat16' if linear.bf16 else 'float16'} as stored"
    return f"dense {np.dtype(linear.weight.dtype).name}"


def linear_bytes(linear: Linear) -> int:
    """The bytes one call of a Linear reads: its weight arrays and bias."""
    arrays = (getattr(linear, f.name) for f in fields(linear))
    return sum(a.nbytes for a in arrays if getattr(a, "ndim", 0) > 0)  # (flags such as bf16 are no arrays)


def model_weights(model) -> list[WeightInfo]:
    """Format and bytes of each decoder layer (projections and norms) and of the lm_head."""
    out = []
    for l, layer in enumerate(model.weights.layers):
        linears = (layer.qkv, layer.o_proj, layer.gate_up, layer.down_proj)
        formats = ", ".join(dict.fromkeys(weight_format(x) for x in linears))
        nbytes = sum(map(linear_bytes, linears)) + layer.input_norm.nbytes + layer.post_norm.nbytes
        out.append(WeightInfo(f"layer {l}", formats, nbytes))
    head = model.weights.lm_head
    out.append(WeightInfo("lm_head", weight_format(head), linear_bytes(head)))
    return out


def step_setting(name: str, p: SamplingParams) -> str:
    """The parameters of SamplingParams that a step of sampling.probabilities applies, in words."""
    return {"repetition_penalty": f"penalty {p.repetition_penalty:g}",
            "frequency_presence_penalty": f"frequency {p.frequency_penalty:g}, presence {p.presence_penalty:g}",
            "temperature_scale": f"temperature {p.temperature:g}", "greedy": "temperature 0",
            "top_k_filter": f"k {p.top_k if p.top_k is not None else 'off'}", "top_p_filter": f"p {p.top_p:g}",
            }.get(name, "")


def trace(llm, inputs: dict, heads=None) -> Trace:
    """Generate for ``inputs`` as ``llm.run`` would, recording every step (see the module's docstring).

    ``heads``: the query heads whose attention is reported (default: ``default_heads``).
    The tokens drawn are the ones ``run`` draws with the same inputs and seed: a generated
    token's logits are the compiled decode step's, as in ``run`` (Model.forward, observed).
    """
    request = parse_inputs(inputs)
    model = llm.model
    heads = check_heads(heads, model.config)
    prompt_ids = llm.prompt_ids(request)
    check_prompt(model, prompt_ids)
    template = None if request.chat is None else llm.tokenizer.apply_chat_template(request.chat)
    _warm_up(model, prompt_ids[0])
    rec = _Recorder(model, prompt_ids, request.sampling, llm.stop_ids, heads)
    seq = rec.seq
    decoder = llm.tokenizer.stream_decoder()
    texts, reason = [], None
    seq.start()
    try:
        for token, reason in seq.tokens():
            text = "" if token in llm.stop_ids else decoder.add(token)
            text += decoder.finish() if reason is not None else ""
            rec.drawn(token, reason, text)
            texts.append(text)
    finally:
        seq.close()
    pieces = {i: piece for i in sorted(rec.ids) if (piece := llm.tokenizer.id_to_token(i)) is not None}
    n = min(rec.maps.shape[2], rec.steps[-1].kv.positions)
    return Trace(llm.name, model.config, request.sampling, model.kv_dtype, template, list(prompt_ids), pieces, heads,
                 model_weights(model), rec.steps, rec.maps[:, :, :n, :n], "".join(texts), reason)


def _warm_up(model, token: int) -> None:
    """Run the readable forward's kernels once (a 2-token prompt, then one token) so no step times compiling."""
    cache = model.new_cache(3)
    try:
        model.forward([token, token], cache, fast=False)
        model.forward([token], cache, observe=lambda l, name, value: None)
    finally:
        cache.close()


class _Recorder:
    """The Sequence's observer: turns decoder_layer's and the sampler's observations into Steps."""

    def __init__(self, model, prompt_ids: list[int], params: SamplingParams, stop_ids: frozenset[int],
                 heads: tuple[int, ...]):
        self.seq = Sequence(model, prompt_ids, params, stop_ids, observer=self)
        self.model, self.heads, c = model, heads, model.config
        self.host = model.backend.to_host
        self.steps: list[Step] = []
        self.step: Step | None = None
        self.ids = set(prompt_ids)  # every token id the trace shows
        n = min(self.seq.capacity, MAP_POSITIONS)
        self.maps = np.zeros((c.num_hidden_layers, len(heads), n, n), np.float32)
        self._clock = perf_counter()  # when the trace's own work last ended
        self._final: np.ndarray | None = None  # the distribution the next token is drawn from
        self._previous = None  # the last sampling step's output
        self._readable: np.ndarray | None = None  # the readable lm_head's logits of the current step

    def layer(self, l: int | None, name: str, value) -> None:
        """Model.forward's observer: one observation of decoder_layer ``l``, or of the model's end (l None)."""
        elapsed = perf_counter() - self._clock
        if l is None:
            self._end(name, value, elapsed)
        elif name == "residual_in":
            if l == 0:
                self._begin(value.shape[0])
            self.step.layers.append(LayerTrace(l, self._norm(value), 0.0, 0.0, 0.0, {}))
        else:
            self.step.layers[l].seconds += elapsed
        if name == "qkv_rotated":
            self._attention(l, value)
        elif name == "residual_mid":
            self.step.layers[l].norm_mid = self._norm(value)
        elif name == "residual_out":
            self.step.layers[l].norm_out = self._norm(value)
            if l == self.model.config.num_hidden_layers - 1:
                self._kv(self.step.start + len(self.step.ids))
        self._clock = perf_counter()

    def sampling(self, name: str, value: np.ndarray) -> None:
        """sampling.probabilities' observer: the logits after one step, or the final probabilities."""
        probs = value if name in FINAL_STEPS else softmax(value)
        order = np.argsort(-probs, kind="stable")[:TOP]
        top = [Candidate(int(i), float(probs[i]), None if name in FINAL_STEPS else float(value[i])) for i in order]
        self.ids.update(c.token for c in top)
        self.step.sampling.append(SamplingStep(name, step_setting(name, self.seq.params), value is not self._previous,
                                               int(np.count_nonzero(probs)), top))
        self._previous = value
        if name in FINAL_STEPS:
            self._final = probs
        self._clock = perf_counter()

    def drawn(self, token: int, reason: str | None, text: str) -> None:
        """The token sampled from the current step's logits, and the text it let out."""
        p = self._final
        self.step.token, self.step.token_prob = token, float(p[token])
        self.step.token_rank = int(np.count_nonzero(p > p[token])) + 1
        self.step.text, self.step.finish_reason = text, reason
        self.ids.add(token)
        self._previous = None
        self._clock = perf_counter()

    def _end(self, name: str, logits, elapsed: float) -> None:
        """The readable lm_head's logits, then (a decode step run) the compiled step's, which are sampled."""
        last = np.asarray(logits[-1], np.float64)  # (Model.forward hands logits over on the host)
        if name == "lm_head":
            self.step.head_seconds, self._readable = elapsed, last
            probs = softmax(last)
            self.step.readable_top = [Candidate(int(i), float(probs[i]), float(last[i]))
                                      for i in np.argsort(-probs, kind="stable")[:TOP]]
        else:
            self.step.compiled_seconds = elapsed
            diff = np.abs(last - self._readable)
            self.step.compiled_diff = float(diff.max())
            self.step.compiled_top_diff = float(diff[[c.token for c in self.step.readable_top]].max())

    def _begin(self, rows: int) -> None:
        """A forward starts: a prompt chunk while the prompt is being read, else the last drawn token."""
        seq, start = self.seq, self.seq.cache.pos
        if seq.reading_prompt:
            self.step = Step("prefill", start, seq.prompt_ids[start:start + rows])
        else:
            self.step = Step("decode", start, [self.steps[-1].token])
        self.steps.append(self.step)

    def _norm(self, x) -> float:
        """|x| of the last row."""
        return float(np.linalg.norm(np.asarray(self.host(x[-1:]), np.float64)))

    def _kv(self, positions: int) -> None:
        cache = self.seq.cache
        self.step.kv = KVState(positions, cache.capacity, cache.allocated, cache.nbytes, cache.reserved,
                               cache.bytes_per_position)

    def _attention(self, l: int, qkv) -> None:
        """Instrumentation: the reported heads' attention probabilities, recomputed as the kernel computes them.

        kernels/attention.py's ``attention``: softmax(q k^T / sqrt(D)) over positions 0..start+t
        for row t, query head h reading KV head h // (heads / KV heads), k as the cache holds it.
        """
        c, step = self.model.config, self.step
        D, T, start = c.head_dim, qkv.shape[0], step.start
        n = start + T
        keys = np.asarray(self.host(self.seq.cache.k[l][:, :n]))  # (KV, n, D)
        keys = (keys.view(np.float16) if keys.dtype == np.uint16 else keys).astype(np.float64)
        q = np.asarray(self.host(qkv), np.float64)[:, :c.q_size].reshape(T, c.num_attention_heads, D)
        group = c.num_attention_heads // c.num_key_value_heads
        causal = np.arange(n)[None, :] > start + np.arange(T)[:, None]  # (T, n): row t sees 0..start+t
        N = self.maps.shape[2]
        for i, h in enumerate(self.heads):
            scores = np.where(causal, -np.inf, q[:, h] @ keys[h // group].T / math.sqrt(D))
            probs = np.exp(scores - scores.max(axis=1, keepdims=True))
            probs /= probs.sum(axis=1, keepdims=True)
            if start < N:
                rows = min(T, N - start)
                self.maps[l, i, start:start + rows, :min(n, N)] = probs[:rows, :N]
            last = probs[-1]
            order = np.argsort(-last, kind="stable")[:TOP]
            step.layers[l].attention[h] = [(int(p), float(last[p])) for p in order]
