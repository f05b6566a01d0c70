"""The optimisation step every model tailor trains shares: AdamW's cosine schedule with a 5% warm-up, and a
clipped step (demo CLIP, demo captioner, proxy CLIPs)."""

from __future__ import annotations

import math


def cosine_with_warmup(optimizer, steps: int):
    """Linear warm-up over the first 5% of `steps`, then cosine decay to 0."""
    import torch

    warmup = max(1, steps // 20)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))


def clipped_step(model, optimizer, schedule, loss, max_norm: float = 1.0) -> float:
    """Backward, clip the gradient norm, step optimizer and schedule; the loss as a float."""
    import torch

    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()
    schedule.step()
    return loss.item()
