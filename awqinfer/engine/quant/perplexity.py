"""Perplexity of a model on a text, scored in strided windows: how the quantizer's quality is measured.

The method is the one Hugging Face documents for fixed-length models ("Perplexity of
fixed-length models", transformers' docs), so a figure here can be compared with one
computed there:

    ids = tokenizer.encode(text)                 the tokenizer's own special tokens (a Llama BOS) included,
                                                 cut to max_tokens
    for begin in 0, stride, 2 * stride, ...:     each window [begin, begin + window) runs from an empty
        score the window's tokens that no        KV cache; the first window scores all its tokens but
        earlier window scored                    the first, later ones their last ``stride`` (but a
                                                 window's first token, which nothing in it predicts)
    perplexity = exp(total negative log-likelihood / tokens scored)

Every token after the first window is thus predicted from at least ``window - stride``
tokens of context; stride == window gives plain disjoint windows, each scoring all
its tokens but the first. The cost is
len(ids) / stride windows of ``window`` tokens each.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ...errors import InputError
from ..model.forward import Model

DEFAULT_WINDOW = 512  # tokens per window (or the model's context if shorter); the stride defaults to half


@dataclass(frozen=True)
class Perplexity:
    """A perplexity and how it was measured."""

    perplexity: float
    nll: float  # mean negative log-likelihood per scored token, in nats
    tokens: int  # tokens scored
    windows: int  # forward passes
    window: int  # tokens per window
    stride: int  # tokens between window starts

    def to_dict(self) -> dict:
        """The fields as a JSON-ready dict, with the method named."""
        return {**asdict(self), "method": f"strided windows of {self.window} tokens every {self.stride}"}


def token_log_likelihoods(model: Model, ids: np.ndarray, first: int) -> np.ndarray:
    """log p(ids[t] | ids[:t]) for t = first..len(ids)-1, from one forward pass over ``ids`` (T,): (T - first,) f64."""
    logits = model.forward(ids, model.new_cache(len(ids)))[first - 1:-1]  # row t-1 predicts token t
    top = logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(logits - top, dtype=np.float64).sum(axis=1)) + top[:, 0]
    return logits[np.arange(len(logits)), ids[first:]].astype(np.float64) - log_norm


def perplexity(model: Model, ids, window: int | None = None, stride: int | None = None,
               progress=None) -> Perplexity:
    """The perplexity of ``model`` on the token ids ``ids`` by strided windows (see the module doc).

    ``window``: tokens per forward pass (default DEFAULT_WINDOW, or the model's context if shorter);
    ``stride``: tokens between window starts (default: half the window).
    ``progress``: an optional callable, given the number of tokens newly scored after each window.
    """
    ids = np.asarray(ids, dtype=np.int64)
    if ids.ndim != 1 or len(ids) < 2:
        raise InputError(f"perplexity needs at least 2 tokens, got {ids.size}")
    if window is None:
        window = min(DEFAULT_WINDOW, model.config.max_position_embeddings)
    if stride is None and isinstance(window, int):
        stride = max(window // 2, 1)
    _check_window(model, window, stride)
    total, scored, windows, begin = 0.0, 0, 0, 0
    done = 1  # tokens before this position are scored (token 0 never is: nothing predicts it)
    while done < len(ids):
        end = min(begin + window, len(ids))
        logp = token_log_likelihoods(model, ids[begin:end], max(done - begin, 1))
        total -= float(logp.sum())
        scored += len(logp)
        windows += 1
        done, begin = end, begin + stride
        if progress is not None:
            progress(len(logp))
    nll = total / scored
    return Perplexity(math.exp(nll), nll, scored, windows, window, stride)


def text_perplexity(model: Model, tokenizer, text: str, max_tokens: int | None = None,
                    window: int | None = None, stride: int | None = None, progress=None) -> Perplexity:
    """The perplexity of ``model`` on ``text``, tokenized by ``tokenizer`` (special tokens in it are kept)."""
    ids = tokenizer.encode(text)
    if max_tokens is not None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 2:
            raise InputError(f"max_tokens must be an integer of at least 2, got {max_tokens!r}")
        ids = ids[:max_tokens]
    if len(ids) < 2:
        raise InputError(f"the text has {len(ids)} token(s); perplexity needs at least 2")
    return perplexity(model, ids, window, stride, progress)


def _check_window(model: Model, window: int, stride: int) -> None:
    for name, value in (("window", window), ("stride", stride)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"{name} must be an integer, got {value!r}")
    limit = model.config.max_position_embeddings
    if not 2 <= window <= limit:
        raise InputError(f"window must be between 2 and the model's {limit} positions, got {window}")
    if not 1 <= stride <= window:
        raise InputError(f"stride must be between 1 and the window ({window}), got {stride}")
