"""Compilation: whether a stage compiles, with which backend, and how many graphs each compiled function made.

Owns `should_compile` (the `auto` / `1` / `0` settings of `train.compile`, `eval.compile` and
`eval.compile_dynamic`: `auto` compiles on CUDA only, as the run did, `1` on any device, the CPU
included) and `Region`, one compiled function with its own graph count and compile seconds.

Why regions. Dynamo caches compiled code per *code object* (`GPT.forward`), so every compiled copy of
the model in one process shares one cache and one recompile limit (8): evaluating every variant in
one process hit it (the QAT flag, grad mode, `requires_grad` of frozen parameters and the last
batch's size each add a graph) and every later variant then ran eagerly, silently. A region is one
`torch.compile` call with `isolate_recompiles=True` (torch 2.13 has it; a torch without it: the caller
resets dynamo between variants), over a function that takes the model as an argument, so one region serves
every copy of the weights of a variant (virtual ranks) with the same graphs. Each graph the backend
is handed is counted; the seconds of every call that compiled are counted apart from the others
(they include that call's own run: an upper bound on compile time, kept out of the scoring time).
"""

from __future__ import annotations

import inspect
import time

import torch
import torch._guards

from .config import switch_on


def should_compile(setting: str, device: torch.device) -> bool:
    """`auto`: on CUDA only (the profiles' default, as the run); `1`: on any device; `0`: never."""
    return switch_on(setting, torch.device(device))


def isolates_recompiles() -> bool:
    """Whether this torch gives each torch.compile call its own cache and recompile limit."""
    return "isolate_recompiles" in inspect.signature(torch.compile).parameters


def _call(model, *args, **kwargs):
    return model(*args, **kwargs)


class Region:
    """One compiled function (`torch.compile` over `fn`, or over calling a model), counting its graphs.

    `forward(model)` gives a callable with the model's signature that runs through this region; every
    model handed to one region shares its graphs when their structure and guards agree.
    """

    def __init__(self, name: str, backend: str = "inductor", *, fn=None, dynamic: bool | None = False,
                 fullgraph: bool = False):
        self.name, self.backend = name, backend
        self.compiles: set[str] = set()  # dynamo's compile ids: one per graph captured (a recompile adds one)
        self.backend_calls, self.compile_seconds, self.calls_compiling = 0, 0.0, 0
        from torch._dynamo.backends.registry import lookup_backend
        inner = lookup_backend(backend)

        def counting(gm, example_inputs):
            # under DDP dynamo splits a graph at gradient-bucket boundaries and hands each piece to the
            # backend: pieces of one capture share its compile id
            self.compiles.add(str(torch._guards.CompileContext.current_compile_id()))
            self.backend_calls += 1
            return inner(gm, example_inputs)

        kw = {"isolate_recompiles": True} if isolates_recompiles() else {}
        self.compiled = torch.compile(fn or _call, backend=counting, dynamic=dynamic, fullgraph=fullgraph, **kw)

    def __call__(self, *args, **kwargs):
        before = self.graphs
        t0 = time.perf_counter()
        out = self.compiled(*args, **kwargs)
        if self.graphs != before:
            self.compile_seconds += time.perf_counter() - t0
            self.calls_compiling += 1
        return out

    @property
    def graphs(self) -> int:
        """Graphs dynamo captured for this region (each recompile adds one)."""
        return len(self.compiles)

    def forward(self, model):
        return lambda *args, **kwargs: self(model, *args, **kwargs)

    def record(self) -> dict:
        return {"graphs": self.graphs, "backend_calls": self.backend_calls, "compile_seconds": self.compile_seconds,
                "backend": self.backend}


class Regions:
    """The regions of one stage or variant, by name, so their graph counts are recorded together."""

    def __init__(self, backend: str):
        self.backend = backend
        self.by_name: dict[str, Region] = {}

    def get(self, name: str, **kw) -> Region:
        if name not in self.by_name:
            self.by_name[name] = Region(name, self.backend, **kw)
        return self.by_name[name]

    def record(self) -> dict:
        return {n: r.record() for n, r in self.by_name.items()}

    @property
    def compile_seconds(self) -> float:
        return sum(r.compile_seconds for r in self.by_name.values())
