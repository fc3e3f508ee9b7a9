"""Ulysses sequence parallelism for a Wan expert: one forward spread over the ranks of a process group.

Each rank holds the whole expert. The video's tokens are split into contiguous shards (`shard_sizes`, uneven when
the count does not divide); each rank runs every block on its shard, and around the self-attention kernel two
all-to-alls turn token shards into head shards (every rank attends over ALL tokens with H/N heads) and back.
Cross-attention reads the full text states on every rank, the feed-forward is per token, and RoPE runs after the
first exchange, on every token with the full tables (so Q and K travel in BF16, not in RoPE's float32). The
projected output is gathered back in token order on every rank.

`enable(model, group)` installs it with three forward hooks on modules that run once per forward outside the
repeated blocks (`rope`, `patch_embedding`, `proj_out`, the places diffusers' own context-parallel plan for Wan
splits and gathers) and a Ulysses-wrapped kernel on each block's self-attention: whatever kernel the speed options
chose (wan22_triton.fast_path), or SDPA for diffusers' default processor. The collectives are torch's functional
collectives, which torch.compile traces, so a regionally compiled block keeps its all-to-alls inside the graph.
The number of heads must divide by the group size (`parallel.check_heads`).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
import torch.nn.functional as F

from .parallel import check_heads
from .self_attention import SelfAttnProcessor, WanAttnProcessor


# torch >= 2.12 names it all_gather_single (all_gather_tensor, deprecated there, is the older hosts' name)
_all_gather = getattr(funcol, "all_gather_single", None) or funcol.all_gather_tensor


def shard_sizes(tokens: int, world: int) -> list[int]:
    """Tokens per rank, contiguous, the first `tokens % world` ranks one more (torch.tensor_split's rule)."""
    base, extra = divmod(tokens, world)
    return [base + (1 if r < extra else 0) for r in range(world)]


def sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """PyTorch's SDPA on (B, S, H, D), as diffusers' native attention backend calls it."""
    out = F.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2))
    return out.transpose(1, 2)


class Ulysses:
    """The all-to-alls of one process group for the current forward's token count (`begin`)."""

    def __init__(self, group: dist.ProcessGroup):
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.sizes: list[int] = []

    def begin(self, tokens: int) -> None:
        self.sizes = shard_sizes(tokens, self.world)

    @property
    def local(self) -> slice:
        start = sum(self.sizes[: self.rank])
        return slice(start, start + self.sizes[self.rank])

    def tokens_to_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S_rank, H, D) -> (B, S, H/N, D): this rank's head group for every token."""
        b, s, h, d = x.shape
        n = self.world
        send = x.view(b, s, n, h // n, d).permute(2, 1, 0, 3, 4).reshape(n * s, b, h // n, d)
        recv = funcol.all_to_all_single(send, self.sizes, [s] * n, self.group)
        return funcol.wait_tensor(recv).permute(1, 0, 2, 3)

    def heads_to_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S, H/N, D) -> (B, S_rank, H, D): this rank's tokens with every head."""
        b, _, hn, d = x.shape
        n, s = self.world, self.sizes[self.rank]
        send = x.permute(1, 0, 2, 3).contiguous()
        recv = funcol.wait_tensor(funcol.all_to_all_single(send, [s] * n, self.sizes, self.group))
        return recv.view(n, s, b, hn, d).permute(2, 1, 0, 3, 4).reshape(b, s, n * hn, d)

    def gather_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S_rank, C) from every rank -> (B, S, C) in token order (padded to the largest shard to gather)."""
        longest = max(self.sizes)
        padded = F.pad(x, (0, 0, 0, longest - x.shape[1]))
        gathered = funcol.wait_tensor(_all_gather(padded.contiguous(), 0, self.group))
        shards = gathered.view(self.world, *padded.shape)
        return torch.cat([shards[r, :, :n] for r, n in enumerate(self.sizes)], dim=1)


class UlyssesAttnProcessor(WanAttnProcessor):
    """A self-attention processor whose RoPE and kernel run between Ulysses' all-to-alls: Q, K and V travel in the
    projections' dtype (BF16; after RoPE the FP8 kernel's Q and K would be float32, twice the bytes), RoPE uses the
    full tables on the full sequence, and the output travels back in the projections' dtype. Elementwise, RoPE
    gives the same values before or after the exchange."""

    def __init__(self, inner: WanAttnProcessor, ulysses: Ulysses):
        super().__init__(inner.attention, inner.rope_in_float32)
        self.ulysses = ulysses

    def attend(self, query, key, value, rotary_emb=None, attention_mask=None):
        if attention_mask is not None:
            raise ValueError("Ulysses self-attention is unmasked (the blocks' attn1)")
        heads = [self.ulysses.tokens_to_heads(x.contiguous()) for x in (query, key, value)]
        out = super().attend(*heads, rotary_emb)
        return self.ulysses.heads_to_tokens(out.contiguous())


def _parallel_processor(processor: object, ulysses: Ulysses) -> WanAttnProcessor:
    """The block's self-attention processor with RoPE and its kernel between Ulysses' all-to-alls."""
    if isinstance(processor, SelfAttnProcessor):  # a speed option's kernel
        return UlyssesAttnProcessor(processor, ulysses)
    # diffusers' processor: the same arithmetic (Q, K rounded back after RoPE) on SDPA
    return UlyssesAttnProcessor(WanAttnProcessor(sdpa), ulysses)


def enable(model: torch.nn.Module, group: dist.ProcessGroup) -> Ulysses:
    """Make `model`'s forward a Ulysses forward over `group` (every rank calls it with the same inputs)."""
    ulysses = Ulysses(group)
    check_heads(model.config.num_attention_heads, ulysses.world)  # the export checked it; a hand-made group too
    for block in model.blocks:
        block.attn1.set_processor(_parallel_processor(block.attn1.processor, ulysses))

    def start_forward(module, args, out: tuple[torch.Tensor, ...]) -> None:
        # the forward's first step: the tables' length is the token count of this forward; they stay whole (RoPE
        # runs after the exchange, on every token)
        ulysses.begin(out[0].shape[1])

    def shard_patches(module, args, out: torch.Tensor) -> torch.Tensor:
        # (B, C, f, h, w) -> (B, C, S_rank, 1, 1): the forward's flatten(2).transpose(1, 2) then yields this
        # rank's tokens (B, S_rank, C)
        return out.flatten(2)[:, :, ulysses.local, None, None]

    def gather_output(module, args, out: torch.Tensor) -> torch.Tensor:
        return ulysses.gather_tokens(out)

    model.rope.register_forward_hook(start_forward)
    model.patch_embedding.register_forward_hook(shard_patches)
    model.proj_out.register_forward_hook(gather_output)
    return ulysses

