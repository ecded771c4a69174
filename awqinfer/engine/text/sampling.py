"""Next-token sampling: SamplingParams, then small pure steps on the last logits.

    logits -> repetition penalty -> frequency/presence penalties -> temperature
           -> top-k -> top-p -> softmax -> seeded draw

The order is the one transformers' ``generate`` applies (processors before
warpers). Each step is a pure function of float64 logits (its input is never
modified), so a test can check it alone against a plain-numpy reference. Masked tokens are
set to -inf; ``softmax`` gives them probability 0 and the draw never picks them.

Values inside the schema's ranges that have no natural meaning, defined here:
  * ``repetition_penalty`` 0 disables the penalty, as 1 does. CTRL's rule divides
    by the penalty, so 0 would be a division by zero; 0 is also what "no
    penalty" reads as next to the frequency and presence penalties.
  * ``temperature`` 0 is greedy: the argmax of the penalised logits (ties go to
    the lowest token id); top-k and top-p cannot change the argmax.
  * ``top_p`` >= 1 keeps every token; ``top_p`` 0 keeps only the most likely token
    (and any tied with it).
  * ``top_k`` larger than the vocabulary keeps every token.
  * Ties at a top-k or top-p cut-off are all kept (no token id is favoured).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from .schema import FIELDS


@dataclass(frozen=True)
class SamplingParams:
    """How many tokens to generate and how to pick each one; every field checked against the schema."""

    max_tokens: int = FIELDS["max_tokens"].default
    temperature: float = FIELDS["temperature"].default  # 0: greedy
    top_p: float = 1.0  # >= 1: keep every token
    top_k: int | None = None  # None: keep every token
    seed: int | None = None  # None: a fresh random seed each run
    repetition_penalty: float = 1.0  # 1 (or 0): off; over prompt and generated tokens
    frequency_penalty: float = 0.0  # over generated tokens
    presence_penalty: float = 0.0  # over generated tokens

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.default is None:
                continue
            object.__setattr__(self, f.name, FIELDS[f.name].check(value))


class History:
    """What the penalties look at: tokens seen so far (prompt and output) and output counts.

    seen: (vocab,) bool, counts: (vocab,) int64. Updated in place as tokens are generated,
    so a step costs O(1) however long the prompt.
    """

    def __init__(self, vocab_size: int, prompt_ids=()):
        self.seen = np.zeros(vocab_size, dtype=bool)
        self.seen[np.asarray(prompt_ids, dtype=np.int64)] = True
        self.counts = np.zeros(vocab_size, dtype=np.int64)

    def add(self, token: int) -> None:
        """Record a generated token."""
        self.seen[token] = True
        self.counts[token] += 1


NO_REPETITION_PENALTY = (0.0, 1.0)  # repetition_penalty values that leave the logits as they are


def repetition_penalty(logits: np.ndarray, seen: np.ndarray, penalty: float) -> np.ndarray:
    """CTRL's rule (transformers' RepetitionPenaltyLogitsProcessor) on the tokens marked in ``seen``.

    A seen token's positive logit is divided by ``penalty``, a negative one multiplied,
    so penalty > 1 makes repeats less likely whatever the sign. 0 and 1 leave logits as they are.
    """
    if penalty in NO_REPETITION_PENALTY:
        return logits
    out = logits.copy()
    s = out[seen]
    with np.errstate(over="ignore"):  # a vanishing penalty sends positive logits to +inf: see softmax
        out[seen] = np.where(s < 0, s * penalty, s / penalty)
    return out


def frequency_presence_penalty(logits: np.ndarray, counts: np.ndarray, frequency: float,
                               presence: float) -> np.ndarray:
    """OpenAI's rule over generated tokens: logit -= count * frequency + (count > 0) * presence."""
    if frequency == 0 and presence == 0:
        return logits
    return logits - counts * frequency - (counts > 0) * presence


def temperature_scale(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Logits / temperature, after shifting the largest to 0 (softmax, top-k and top-p ignore shifts).

    The shift keeps a tiny temperature from overflowing: every token below the maximum
    goes to -inf (probability 0) instead of meeting an inf - inf. Logits already +inf
    (a vanishing repetition penalty) are left as they are; softmax shares the mass among them.
    """
    top = logits.max()
    if top == np.inf:
        return logits
    with np.errstate(over="ignore"):  # overflow to -inf is the intended limit
        return (logits - top) / temperature


def top_k_filter(logits: np.ndarray, k: int | None) -> np.ndarray:
    """Mask every token whose logit is below the k-th largest (ties with it are kept)."""
    if k is None or k >= logits.size:
        return logits
    cutoff = np.partition(logits, -k)[-k]
    return np.where(logits >= cutoff, logits, -np.inf)


def top_p_filter(logits: np.ndarray, p: float) -> np.ndarray:
    """Keep the smallest most-likely set whose probability reaches ``p`` (at least one token, ties kept)."""
    if p >= 1:
        return logits
    order = np.argsort(-logits, kind="stable")
    cumulative = np.cumsum(softmax(logits)[order])
    n_keep = min(int(np.searchsorted(cumulative, p)) + 1, logits.size)  # first index reaching p, inclusive
    cutoff = logits[order[n_keep - 1]]
    return np.where(logits >= cutoff, logits, -np.inf)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities from logits, never NaN: if some logits are +inf they share the mass equally."""
    top = logits.max()
    weights = (logits == np.inf).astype(np.float64) if top == np.inf else np.exp(logits - top)
    return weights / weights.sum()


def unobserved(step: str, value: np.ndarray) -> None:
    """The observer when nobody watches the sampler's steps."""


def penalties_off(params: SamplingParams) -> bool:
    """Whether no penalty changes the logits (each step below would return them as they are)."""
    return params.repetition_penalty in NO_REPETITION_PENALTY and params.frequency_penalty == 0 and \
        params.presence_penalty == 0


def penalised(logits, history: History, params: SamplingParams, observe=unobserved) -> np.ndarray:
    """The logits (float64) after the repetition, frequency and presence penalties."""
    x = np.asarray(logits, dtype=np.float64).reshape(-1)
    observe("logits", x)
    x = repetition_penalty(x, history.seen, params.repetition_penalty)
    observe("repetition_penalty", x)
    x = frequency_presence_penalty(x, history.counts, params.frequency_penalty, params.presence_penalty)
    observe("frequency_presence_penalty", x)
    return x


def probabilities(logits, history: History, params: SamplingParams, observe=unobserved) -> np.ndarray:
    """The distribution the next token is drawn from: every step above, in transformers' order.

    ``observe(step, value)`` sees the logits after each step, named after its function
    ('logits' first: the model's own), then the probabilities ('softmax', or 'greedy' at
    temperature 0). A step that is off returns its input itself (``is``). engine/trace.py
    shows a token's way through them.
    """
    x = penalised(logits, history, params, observe)
    if params.temperature == 0:
        greedy = np.zeros_like(x)
        greedy[int(np.argmax(x))] = 1.0
        observe("greedy", greedy)
        return greedy
    x = temperature_scale(x, params.temperature)
    observe("temperature_scale", x)
    x = top_k_filter(x, params.top_k)
    observe("top_k_filter", x)
    x = top_p_filter(x, params.top_p)
    observe("top_p_filter", x)
    probs = softmax(x)
    observe("softmax", probs)
    return probs


def draw(probs: np.ndarray, rng: np.random.Generator) -> int:
    """One token from ``probs`` by inverse CDF with one uniform from ``rng``; zero-probability tokens never win."""
    cumulative = np.cumsum(probs)
    index = np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right")
    return int(min(index, np.flatnonzero(probs)[-1]))  # (u * total can round up to total, once in 2**53)


def next_token(logits, history: History, params: SamplingParams, rng: np.random.Generator,
               observe=unobserved) -> int:
    """The sampler: process the last logits, then draw with the run's seeded generator.

    Greedy (temperature 0) takes the argmax of the penalised logits directly: the token the
    one-hot distribution of ``probabilities`` would give, without building it and drawing
    (which cost ~20% of a small model's decode step); it draws nothing from ``rng`` either way.
    ``observe``: see ``probabilities`` (a watched greedy step builds the one-hot to show it).
    """
    if params.temperature == 0:
        if observe is not unobserved:
            return int(np.argmax(probabilities(logits, history, params, observe)))
        if penalties_off(params):  # the argmax as given: widening to float64 keeps the order and the ties
            return int(np.argmax(logits))
        return int(np.argmax(penalised(logits, history, params)))
    return draw(probabilities(logits, history, params, observe), rng)
