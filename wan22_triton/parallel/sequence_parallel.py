"""Ulysses sequence parallelism for a Wan expert: one forward spread over the ranks of a process group.

Each rank holds the whole expert. The video's tokens are split into contiguous shards (`shard_sizes`, uneven when
the count does not divide); each rank runs every block on its shard, and around the self-attention kernel two
all-to-alls turn token shards into head shards (every rank attends over ALL tokens with H/N heads) and back.
Cross-attention reads the full text states on every rank, the feed-forward is per token, and RoPE runs after the
first exchange, on every token with the full tables (so Q and K travel in BF16, not in RoPE's float32). The
projected output is gathered back in token order on every rank.

`enable(model, group)` installs it with four forward hooks on modules that run once per forward outside the
repeated blocks (`rope`, `patch_embedding`, `condition_embedder` for per-token timesteps, `proj_out`: the places
diffusers' own context-parallel plan for Wan splits and gathers) and a Ulysses-wrapped kernel on each block's self-attention: whatever kernel the speed options
chose (wan22_triton.speed.fast_path), or SDPA for diffusers' default processor. The collectives are torch's functional
collectives, which torch.compile traces, so a regionally compiled block keeps its all-to-alls inside the graph.
The number of heads must divide by the group size (`parallel.check_heads`).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
import torch.nn.functional as F

from wan22_triton.parallel.plan import check_heads
from wan22_triton.speed.self_attention import SelfAttnProcessor, WanAttnProcessor


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
    """The all-to-alls of one process group for the current forward's token count (`begin`).

    Self-attention's exchange goes in `chunks` pieces of each rank's head group (uneven when the count does not
    divide; never more pieces than heads): every piece's Q, K and V travel in one all-to-all, all pieces are sent
    before any is attended, and a piece's output goes back while the next piece is attended. On GPUs the
    collectives run on NCCL's stream beside the compute stream, so only the first piece's inbound and the last
    piece's outbound exchange are not hidden behind attention (`overlap_waits` and `after` keep that order in a
    compiled block)."""

    def __init__(self, group: dist.ProcessGroup, chunks: int = 1):
        if chunks < 1:
            raise ValueError(f"Ulysses chunks must be >= 1, got {chunks}")
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.chunks = chunks
        self.sizes: list[int] = []

    def begin(self, tokens: int) -> None:
        self.sizes = shard_sizes(tokens, self.world)

    @property
    def local(self) -> slice:
        start = sum(self.sizes[: self.rank])
        return slice(start, start + self.sizes[self.rank])

    def head_pieces(self, heads: int) -> list[int]:
        """Heads per piece of each rank's head group (heads / world of them)."""
        per_rank = heads // self.world
        return shard_sizes(per_rank, min(self.chunks, per_rank))

    def tokens_to_heads(self, xs: tuple[torch.Tensor, ...], start: int, size: int) -> torch.Tensor:
        """Tensors (B, S_rank, H, D) of one dtype -> (T, B, S, size, D): heads start..start+size of this rank's
        head group, for every token, T = len(xs), in one all-to-all (waited for where it is first read)."""
        b, s, h, d = xs[0].shape
        n = self.world
        pieces = [x.unflatten(2, (n, h // n)).narrow(3, start, size) for x in xs]  # (B, S_rank, N, size, D) each
        send = torch.stack(pieces).permute(3, 2, 0, 1, 4, 5).reshape(n * s, len(xs), b, size, d)
        recv = funcol.all_to_all_single(send, self.sizes, [s] * n, self.group)
        return recv.permute(1, 2, 0, 3, 4)

    def heads_to_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S, size, D) of one piece -> (N, S_rank, B, size, D): this rank's tokens of that piece from every
        rank's head group (waited for where it is first read)."""
        b, _, size, d = x.shape
        n, s = self.world, self.sizes[self.rank]
        send = x.permute(1, 0, 2, 3).contiguous()
        recv = funcol.all_to_all_single(send, [s] * n, self.sizes, self.group)
        return recv.view(n, s, b, size, d)

    @staticmethod
    def join_pieces(pieces: list[torch.Tensor]) -> torch.Tensor:
        """`heads_to_tokens` of every piece, in order -> (B, S_rank, H, D) in the model's head order."""
        n, s, b, _, d = pieces[0].shape
        return torch.cat(pieces, dim=3).permute(2, 1, 0, 3, 4).reshape(b, s, -1, d)

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
    gives the same values before or after the exchange. Heads go in pieces (`Ulysses.chunks`): the kernel runs
    once per piece, so the FP8 kernel's per-tensor scales are per piece."""

    def __init__(self, inner: WanAttnProcessor, ulysses: Ulysses):
        super().__init__(inner.attention, inner.rope_in_float32)
        self.ulysses = ulysses

    def attend(self, query, key, value, rotary_emb=None, attention_mask=None):
        if attention_mask is not None:
            raise ValueError("Ulysses self-attention is unmasked (the blocks' attn1)")
        sizes = self.ulysses.head_pieces(query.shape[2])
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        # every piece is sent before the first is attended: piece i+1 travels while piece i is attended
        received = [self.ulysses.tokens_to_heads((query, key, value), start, size)
                    for start, size in zip(starts, sizes)]
        outs: list[torch.Tensor] = []
        out = None
        for qkv in received:
            if out is not None:  # after the previous piece's attention, not its exchange (see `after`)
                qkv = after(qkv, out)
            q, k, v = qkv
            out = super().attend(q, k, v, rotary_emb)
            outs.append(self.ulysses.heads_to_tokens(out))
        return self.ulysses.join_pieces(outs)


def after(x: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """x, computed from only once `previous` exists, in a compiled block (eager code runs in program order anyway).
    Inductor would otherwise fuse the pieces' RoPE into one kernel (they read the same tables), which needs every
    piece's exchange before the first attention. The added term is zero; NaN or inf in `previous` still show."""
    if not torch.compiler.is_compiling():
        return x
    first = previous.flatten()[0]
    return x + (first - first).to(x.dtype)  # Inductor drops a `* 0`, not this


def overlap_waits() -> None:
    """Let Inductor place each collective's wait where its result is first read, not right after the collective
    (where tracing puts it), so a compiled block keeps the pieces' exchanges beside the attention. Inductor's
    `sink_waits` pass; process-wide, set on every rank alike before compiling."""
    import torch._inductor.config as inductor

    inductor.reorder_for_compute_comm_overlap = True
    inductor.reorder_for_compute_comm_overlap_passes = ["sink_waits"]


def _parallel_processor(processor: object, ulysses: Ulysses) -> WanAttnProcessor:
    """The block's self-attention processor with RoPE and its kernel between Ulysses' all-to-alls."""
    if isinstance(processor, SelfAttnProcessor):  # a speed option's kernel
        return UlyssesAttnProcessor(processor, ulysses)
    # diffusers' processor: the same arithmetic (Q, K rounded back after RoPE) on SDPA
    return UlyssesAttnProcessor(WanAttnProcessor(sdpa), ulysses)


def enable(model: torch.nn.Module, group: dist.ProcessGroup, chunks: int = 1) -> Ulysses:
    """Make `model`'s forward a Ulysses forward over `group` (every rank calls it with the same inputs), the
    self-attention exchanged in `chunks` pieces of heads (`Ulysses`)."""
    ulysses = Ulysses(group, chunks)
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

    def shard_timesteps(module, args, out: tuple) -> tuple:
        # a timestep per token (TI2V-5B's expand_timesteps): (B, S, ...) embeddings, each rank keeps its tokens'
        temb, timestep_proj, *rest = out
        if temb.ndim == 3:
            return (temb[:, ulysses.local], timestep_proj[:, ulysses.local], *rest)
        return out

    def gather_output(module, args, out: torch.Tensor) -> torch.Tensor:
        return ulysses.gather_tokens(out)

    model.rope.register_forward_hook(start_forward)
    model.patch_embedding.register_forward_hook(shard_patches)
    model.condition_embedder.register_forward_hook(shard_timesteps)
    model.proj_out.register_forward_hook(gather_output)
    return ulysses

