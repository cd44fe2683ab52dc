"""Assisted decoding's two pure parts: drafting tokens from the context, and the rule that keeps or replaces them.

Assisted (speculative) decoding drafts a few tokens cheaply, lets the model score all of them in one forward pass
(sample.generate's verification step) and keeps the longest prefix the model agrees with, then one token of the
model's own: every forward yields at least one token and often several. The drafts come from
- prompt lookup (transformers' prompt_lookup_num_tokens, Saxena 2023): the sequence's last n-gram is searched for
  earlier in prompt + output, and the tokens that followed it are the draft (free: code and summaries copy names,
  phrases and lines from their context);
- a smaller draft model with the same tokenizer (transformers' assistant_model), decoding ahead of the model.
The rule (Leviathan et al. 2023; Chen et al. 2023): greedy keeps a draft token while it is the model's argmax, so
the output is token for token the model's greedy output. Sampling keeps draft token x, drawn from the draft
distribution q, with probability min(1, p(x) / q(x)) under the model's distribution p; at the first rejection the
token is drawn from max(0, p - q) renormalised, and when every draft is kept one more is drawn from p. Each token's
distribution is then exactly p: sampling is distribution-preserving (q is one-hot for prompt lookup).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sample.sampling import draw

DEFAULT_NGRAM = 2  # transformers' max_matching_ngram_size default


def lookup_draft(seq: torch.Tensor, num_tokens: int, max_ngram: int = DEFAULT_NGRAM) -> list[int]:
    """Up to num_tokens ids that followed the most recent earlier occurrence of the sequence's last n-gram.

    seq (N,): prompt and output so far. The longest n-gram (max_ngram down to 1) that occurs earlier wins; among
    its occurrences the latest is taken (the nearest context repeats best). An empty list when nothing matches.
    """
    N = seq.numel()
    for n in range(min(max_ngram, N - 1), 0, -1):
        tail = seq[N - n :]
        windows = seq[: N - 1].unfold(0, n, 1)  # (N - n, n): every n-gram that ends before the last token
        hits = (windows == tail).all(dim=1).nonzero()
        if hits.numel():
            start = int(hits[-1]) + n
            return seq[start : start + num_tokens].tolist()
    return []


def _generator(generators: Sequence[torch.Generator] | torch.Generator | None) -> torch.Generator | None:
    """The one row's generator (a list of one, one generator, or None for torch's global RNG)."""
    if generators is None or isinstance(generators, torch.Generator):
        return generators
    return generators[0]


def keep_or_replace(
    p: torch.Tensor,
    draft: int,
    q: torch.Tensor | None,
    generators: Sequence[torch.Generator] | torch.Generator | None,
) -> int:
    """The speculative rule at one position of one row: draft (drawn from q (V,), None = one-hot on it) under the
    model's distribution p (V,); returns draft when it is kept, else a token drawn from max(0, p - q)."""
    q_draft = 1.0 if q is None else float(q[draft])
    u = torch.rand((), generator=_generator(generators), device=p.device)
    if float(u) * q_draft < float(p[draft]):  # u < p(x) / q(x), without dividing
        return draft
    residual = p.clone()
    if q is None:
        residual[draft] = 0.0
    else:
        residual = (residual - q).clamp_(min=0.0)
    if float(residual.sum()) <= 0.0:  # p == q up to rounding: p itself is the residual's limit
        residual = p
    return int(draw(residual[None], _generator(generators)))
