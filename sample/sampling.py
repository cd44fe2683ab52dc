"""Pure functions from next-token logits (B, V) to token ids (B,), with an explicit torch.Generator.

Filters are applied in a fixed, documented order: top-k, then temperature, then top-p (nucleus, Holtzman et al.
2019), then a multinomial draw. temperature == 0 means greedy argmax (litgpt `sample`). Filtered-out tokens get
logit -inf, so they have probability exactly 0.
"""

from __future__ import annotations

import torch


def check_sampling_args(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Raise ValueError naming the argument and the fix if any sampling setting is out of range."""
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0 = greedy, 1 = the model's distribution)")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k={top_k} must be >= 1, or None to keep every token")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p={top_p} must be in (0, 1]; use 1.0 (or None) to keep every token")


def apply_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep exactly the k largest logits of each row (ties broken by topk), set the rest to -inf."""
    if k >= logits.size(-1):
        return logits
    values, indices = torch.topk(logits, k, dim=-1)  # (B, k)
    return torch.full_like(logits, float("-inf")).scatter(-1, indices, values)  # (B, V)


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Divide logits by temperature (> 0): below 1 sharpens the distribution, above 1 flattens it."""
    if temperature <= 0:
        raise ValueError(f"apply_temperature needs temperature > 0, got {temperature}; 0 means argmax (sample_next)")
    return logits if temperature == 1.0 else logits / temperature


def apply_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability mass is >= p (at least one), -inf the rest."""
    if p >= 1.0:
        return logits
    sorted_logits, sorted_idx = torch.sort(logits, dim=-1, descending=True)  # (B, V)
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs  # (B, V) mass of the strictly more likely tokens
    # a token is dropped once the tokens before it already reach p; the first token never is (mass_before = 0 < p)
    drop_sorted = mass_before >= p
    drop = drop_sorted.scatter(-1, sorted_idx, drop_sorted)  # (B, V) back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw one token per row from next-token logits.

    Args:
        logits: (B, V) unnormalised scores for the next token.
        temperature: 0 picks the argmax (top_k/top_p are then irrelevant); > 0 samples.
        top_k: keep only the k most likely tokens (applied first).
        top_p: keep the smallest set with probability mass >= top_p (applied last, after temperature).
        generator: the random source; must live on logits' device. None uses torch's global RNG.
    Returns:
        (B,) LongTensor of token ids.
    """
    check_sampling_args(temperature, top_k, top_p)
    if logits.dim() != 2:
        raise ValueError(f"sample_next expects logits of shape (B, V), got {tuple(logits.shape)}")
    if temperature == 0:
        return torch.argmax(logits, dim=-1)  # (B,)
    logits = logits.float()  # sample in fp32 whatever the model's dtype
    if top_k is not None:
        logits = apply_top_k(logits, top_k)
    logits = apply_temperature(logits, temperature)
    if top_p is not None:
        logits = apply_top_p(logits, top_p)
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)  # (B,)
