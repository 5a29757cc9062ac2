"""Optimizers: Muon and the run's split of parameters into four optimizers.

Owns `Muon` (Newton-Schulz-5 orthogonalised Nesterov momentum with decoupled weight decay,
rank-sharded with one all-reduce), `build_optimizers` (docs/NUMERICS.md, 'Optimisation'), which
checks that every parameter lands in exactly one group, and the schedule helpers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from . import distributed as dist_utils
from .config import OptimConfig
from .model import GPT, is_control

# Quintic Newton-Schulz coefficients (Keller Jordan's Muon; the record script's values).
NS_COEFFS = (3.4445, -4.7750, 2.0315)


def zeropower_via_newtonschulz5(G: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximately orthogonalise G (the U V^T of its SVD), in bf16, as torch computes it.

    X = bf16(G) / (||bf16(G)||_F + eps), transposed when it has more rows than columns; then `steps`
    times A = X X^T, X <- a X + (b A + c A A) X. The operation order (b*A + (c*A) @ A) follows the
    record script, since bf16 rounding makes it observable.
    """
    a, b, c = NS_COEFFS
    X = G.bfloat16()  # bf16 throughout: the iteration only needs singular values near 1, not precision
    X /= X.norm() + eps  # Frobenius norm >= spectral norm, so every singular value starts in [0, 1]
    transposed = G.size(0) > G.size(1)
    if transposed:  # iterate on the wide side: X X^T is then the smaller Gram matrix
        X = X.T
    for _ in range(steps):
        # the quintic pushes each singular value s toward 1 (a s + b s^3 + c s^5); the coefficients
        # trade exact convergence for speed, so the result is U S' V^T with S' in about [0.7, 1.2]
        A = X @ X.T
        B = b * A + c * A @ A
        X = a * X + B @ X
    return X.T if transposed else X


class Muon(torch.optim.Optimizer):
    """Muon: momentum buf <- m*buf + g; Nesterov g + m*buf; orthogonalise; scale sqrt(max(1, rows/cols)).

    Parameters are dealt round-robin to ranks; each rank orthogonalises its own, writes the update
    into a flat bf16 buffer (so updates are bf16-rounded even on one process), and one all-reduce
    sums the buffer. Then p <- p*(1 - lr*wd) - lr*update on every rank.
    """

    def __init__(self, params, lr: float, momentum: float, backend_steps: int, nesterov: bool = True,
                 weight_decay: float = 0.0, compile_ns=False):
        super().__init__(params, dict(lr=lr, momentum=momentum, backend_steps=backend_steps,
                                      nesterov=nesterov, weight_decay=weight_decay))
        # The run compiles Newton-Schulz (CUDA): fused bf16 kernels, 2-3 ms less per step, and the
        # fused rounding is part of its numerics. Eager on the CPU, where the fixture was made.
        # `compile_ns`: False, True (torch.compile, the default backend) or a compiled callable to use
        # (a `graphs.Region`, which counts its graphs).
        if callable(compile_ns):
            self.orthogonalise = compile_ns
        else:
            self.orthogonalise = torch.compile(zeropower_via_newtonschulz5) if compile_ns else zeropower_via_newtonschulz5

    @torch.no_grad()
    def step(self, closure=None):
        distributed = dist.is_available() and dist.is_initialized()
        world = dist.get_world_size() if distributed else 1
        rank = dist.get_rank() if distributed else 0
        for group in self.param_groups:
            params = group["params"]
            if not params:
                continue
            lr, momentum = group["lr"], group["momentum"]
            total = sum(int(p.numel()) for p in params)
            flat = torch.zeros(total, device=params[0].device, dtype=torch.bfloat16)
            offset = 0
            for i, p in enumerate(params):
                if i % world == rank and p.grad is not None:
                    g = p.grad
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(g)
                    buf = state["momentum_buffer"]
                    buf.mul_(momentum).add_(g)
                    if group["nesterov"]:  # look ahead along the momentum, as the record script does
                        g = g.add(buf, alpha=momentum)
                    g = self.orthogonalise(g, steps=group["backend_steps"])
                    # tall matrices get a larger step: the orthogonalised update has unit singular
                    # values, so its RMS shrinks as rows/cols grows; this restores it
                    g *= max(1, g.size(0) / g.size(1)) ** 0.5
                    # the flat buffer is bf16 in the run: every update is bf16-rounded, one process too
                    flat[offset: offset + p.numel()] = g.reshape(-1)
                offset += p.numel()
            if distributed:  # each rank filled its own parameters' slots; the sum gives everyone all of them
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            wd = group["weight_decay"]
            offset = 0
            for p in params:
                if wd > 0:  # decoupled decay, applied before the update (the run's order)
                    p.mul_(1.0 - lr * wd)
                p.add_(flat[offset: offset + p.numel()].view_as(p).to(p.dtype), alpha=-lr)
                offset += p.numel()

    def state_dict_all_ranks(self) -> dict:
        """`state_dict()` with every rank's momentum buffers (collective: every rank calls it).

        Each buffer lives only on the rank that owns its matrix, and the checkpoint is written by rank
        0: without this, a resume restarts every other rank's matrices from zero momentum. Gathered to
        rank 0 rather than one shard per rank: one file whatever the world size (a resume at another
        world size takes its own share of it), and the buffers are the size of the Muon matrices (27 M
        floats on the record model), gathered once per checkpoint."""
        sd = self.state_dict()
        if not (dist.is_available() and dist.is_initialized()):
            return sd
        world, rank = dist.get_world_size(), dist.get_rank()
        params = [p for g in self.param_groups for p in g["params"]]
        owner = [i % world for g in self.param_groups for i in range(len(g["params"]))]  # as `step` deals them
        mine = [j for j, p in enumerate(params) if owner[j] == rank and "momentum_buffer" in self.state[p]]
        held = sorted(j for part in dist_utils.all_gather_objects(mine) for j in part)
        state = dict(sd["state"])
        for j in held:  # state_dict() numbers parameters in group order, as `params` lists them
            p = params[j]
            buf = self.state[p]["momentum_buffer"] if owner[j] == rank else torch.empty_like(p)
            dist.broadcast(buf, src=owner[j])
            state[j] = {**state.get(j, {}), "momentum_buffer": buf}
        return {**sd, "state": state}

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a (gathered) state, then keep only the buffers of the matrices this rank owns at its world size."""
        super().load_state_dict(state_dict)
        distributed = dist.is_available() and dist.is_initialized()
        world, rank = (dist.get_world_size(), dist.get_rank()) if distributed else (1, 0)
        for g in self.param_groups:
            for i, p in enumerate(g["params"]):
                if i % world != rank:
                    self.state.pop(p, None)


@dataclass
class Optimizers:
    """The run's four optimizers; step/zero_grad/state go to all of them."""

    tok: torch.optim.Optimizer
    muon: Muon
    scalar: torch.optim.Optimizer
    head: torch.optim.Optimizer | None

    @property
    def all(self) -> list:
        return [o for o in (self.tok, self.muon, self.scalar, self.head) if o is not None]

    def step(self) -> None:
        for o in self.all:
            o.step()

    def zero_grad(self) -> None:
        for o in self.all:
            o.zero_grad(set_to_none=True)

    def set_lr_scale(self, mul: float) -> None:
        for o in self.all:
            for g in o.param_groups:
                g["lr"] = g["base_lr"] * mul

    def set_muon_momentum(self, m: float) -> None:
        for g in self.muon.param_groups:
            g["momentum"] = m

    def state_dict(self) -> list:
        """Every optimizer's state, Muon's gathered from every rank (collective under torchrun)."""
        return [o.state_dict_all_ranks() if o is self.muon else o.state_dict() for o in self.all]

    def load_state_dict(self, states: list) -> None:
        for o, s in zip(self.all, states):
            o.load_state_dict(s)


def split_parameters(model: GPT) -> dict[str, list[torch.nn.Parameter]]:
    """The run's groups: token tables, Muon matrices, scalars/control tensors, untied head."""
    blocks = list(model.blocks.named_parameters())
    # Muon only for 2-D weights inside blocks: orthogonalising suits matrices that map activations;
    # vectors, gains and mixes (control tensors, even the 2-D resid_mix) get AdamW
    matrix = [p for n, p in blocks if p.ndim == 2 and not is_control(n)]
    scalar = [p for n, p in blocks if p.ndim < 2 or is_control(n)]
    if model.skip_weights.numel() > 0:
        scalar.append(model.skip_weights)
    scalar.append(model.smear.gate)
    tok = [model.tok_emb.weight]  # lookup tables: rows update sparsely, so AdamW at the token lr
    if model.bigram is not None:
        scalar.append(model.bigram.scale)
        tok.append(model.bigram.embed.weight)
        if model.bigram.proj is not None:  # the run puts the bigram projection with the block matrices
            matrix.append(model.bigram.proj.weight)
    head = [model.lm_head.weight] if model.lm_head is not None else []
    groups = {"tok": tok, "muon": matrix, "scalar": scalar, "head": head}
    seen: dict[int, str] = {}
    for gname, ps in groups.items():
        for p in ps:
            if id(p) in seen:
                raise AssertionError(f"a parameter is in both optimizer groups {seen[id(p)]} and {gname}")
            seen[id(p)] = gname
    # zero-size tensors (the skip weights of a 1-layer model) are left out, as in the run
    orphans = [n for n, p in model.named_parameters() if id(p) not in seen and p.numel() > 0]
    if orphans:
        raise AssertionError(f"parameters in no optimizer group: {orphans}")
    return groups


def build_optimizers(model: GPT, cfg: OptimConfig, tie_embeddings: bool, compile_ns=False) -> Optimizers:
    groups = split_parameters(model)
    fused = next(model.parameters()).is_cuda  # fused AdamW on CUDA as the run; foreach on the CPU
    betas = (cfg.beta1, cfg.beta2)
    token_lr = cfg.tied_embed_lr if tie_embeddings else cfg.embed_lr
    tok = torch.optim.AdamW([{"params": [p], "lr": token_lr, "base_lr": token_lr} for p in groups["tok"]],
                            betas=betas, eps=cfg.adam_eps, weight_decay=cfg.adam_wd, fused=fused)
    muon = Muon(groups["muon"], lr=cfg.matrix_lr, momentum=cfg.muon_momentum_warmup_start
                if cfg.muon_momentum_warmup_steps else cfg.muon_momentum,
                backend_steps=cfg.muon_backend_steps, weight_decay=cfg.muon_wd, compile_ns=compile_ns)
    for g in muon.param_groups:
        g["base_lr"] = cfg.matrix_lr
    scalar = torch.optim.AdamW([{"params": groups["scalar"], "lr": cfg.scalar_lr, "base_lr": cfg.scalar_lr}],
                               betas=betas, eps=cfg.adam_eps, weight_decay=cfg.adam_wd, fused=fused)
    head = None
    if groups["head"]:
        head = torch.optim.Adam([{"params": groups["head"], "lr": cfg.head_lr, "base_lr": cfg.head_lr}],
                                betas=betas, eps=cfg.adam_eps, fused=fused)
    return Optimizers(tok, muon, scalar, head)


def muon_momentum(cfg: OptimConfig, step: int) -> float:
    """Linear warm-up from `muon_momentum_warmup_start` to `muon_momentum` over the warm-up steps."""
    if not cfg.muon_momentum_warmup_steps:
        return cfg.muon_momentum
    f = min(step / cfg.muon_momentum_warmup_steps, 1.0)
    return (1 - f) * cfg.muon_momentum_warmup_start + f * cfg.muon_momentum


def lr_scale(step: int, elapsed_ms: float, iterations: int, warmdown_iters: int, cap_ms: float) -> float:
    """The run's lr multiplier: 1, then linear warmdown -- in time under a wall-clock cap, else in steps."""
    if warmdown_iters <= 0:
        return 1.0
    if cap_ms <= 0:
        start = max(iterations - warmdown_iters, 0)
        return max((iterations - step) / max(warmdown_iters, 1), 0.0) if step >= start else 1.0
    # Under the cap the run does not know how many steps it will get: it turns `warmdown_iters` into
    # time at the average step time so far, and decays linearly to zero at the cap.
    step_ms = elapsed_ms / max(step, 1)
    window = warmdown_iters * step_ms
    remaining = max(cap_ms - elapsed_ms, 0.0)
    return remaining / max(window, 1e-9) if remaining <= window else 1.0
