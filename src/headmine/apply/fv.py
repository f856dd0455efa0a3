"""Function vectors (Todd et al. 2024, ICLR; arXiv 2310.15213): the heads that carry an in-context
task, and the vector their mean outputs make, added to the residual stream to run the task zero-shot.

The method, step by step (spec: ``shared/methods/APPLICATIONS.md`` §2):

1. **Mean head activations** (:func:`last_z`): ``z`` (the input of the attention output projection,
   split into heads) at the last position of *clean* in-context prompts ("Q: x\\nA: y\\n\\n" x shots,
   then "Q: x\\nA:"), averaged over prompts.
2. **Average indirect effect** (:func:`head_cie`, :func:`average_indirect_effect`): on *corrupted*
   prompts (the same demonstrations with their answers shuffled among themselves), replace one
   head's ``z`` at the last position by its clean mean; ``CIE = p_patched(y) - p_corrupted(y)``
   (probabilities of the answer's first token, one head at a time); AIE = the mean over prompts.
   Patching the last position changes nothing before it, so the prompt is run once with a KV cache
   and only its last token is rerun, once per head, all heads stacked along the batch axis
   (``RowwiseReplace`` of :mod:`headmine.causal.fast_sweep`, the one intervention engine). This is
   exact up to float reordering, and about 50x cheaper than rerunning whole prompts.
3. **The function vector** (:func:`function_vector`): ``v = sum_{(l,h) in A} W_O^l[h] . mean_z[l,h]``
   over the top heads ``A`` by AIE. Named choices: the *weight slice only* (the official code calls the
   whole ``o_proj`` per head, adding a bias |A| times; spec pitfall 2) and the adapter's ``d_head``
   (``config.head_dim``, not ``d_model / n_heads``; pitfall 3).
4. **Where it is added** (:func:`adding_vector`): to the output of block ``L_edit`` (the residual
   stream, not ``z``; pitfall 1) at the last position of every forward call, which under KV-cached
   generation with left padding is every generated position (the paper's natural-text setting). A
   model whose generation config turns the KV cache off reruns the whole sequence at every step, and
   then only the newest token carries the vector: generate with ``use_cache=True``.

The run that fits, chooses and evaluates all this on shipped data is :mod:`headmine.apply.fv_run`;
this module holds the measurements and the :class:`FunctionVectors` application (kind ``fv``), which
applies a saved vector during ``generate`` through :func:`headmine.apply.applied`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import torch

from headmine.apply.artifact import HeadArtifact
from headmine.apply.registry import Application, register_application
from headmine.capture.hooks import HookSpec, hooks
from headmine.causal.engine import intervening
from headmine.causal.fast_sweep import RowwiseReplace
from headmine.core.errors import InputError
from headmine.core.ids import HeadId

POSITIONS = ("last", "all")
"""Where the vector is added: the last position of each forward call, or every position."""


# --------------------------------------------------------------------------- encoding and reading
def encode_left(lm: Any, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ``input_ids`` and ``attention_mask`` of ``texts`` (the tokenizer's own special
    tokens), so position -1 is every row's last token (what the last-position edits act on)."""
    tok = lm.tokenizer
    if tok is None:
        raise InputError(f"{lm.name} has no tokenizer", "function vectors need a model with a tokenizer")
    if not texts:
        raise InputError("no prompts given", "give at least one prompt")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    side = tok.padding_side
    tok.padding_side = "left"
    try:
        enc = tok(list(texts), return_tensors="pt", padding=True)
    finally:
        tok.padding_side = side
    lm.check_length(enc["input_ids"].shape[1])
    return enc["input_ids"], enc["attention_mask"]


def last_logits(lm: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Logits [B, V] (float32, CPU) at the last position of left-padded rows, under any active hooks."""
    ids = input_ids.to(lm.device)
    mask = None if attention_mask is None else attention_mask.to(lm.device)
    with torch.no_grad():
        out = lm.model(input_ids=ids, attention_mask=mask, logits_to_keep=1)
    return out.logits[:, -1].float().cpu()


def last_z(lm: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(z [B, L, H, d_head], logits [B, V]) at the last position of left-padded rows, in one forward pass."""
    g = lm.geometry
    store: dict[int, torch.Tensor] = {}

    def grab(layer: int) -> Any:
        def fn(module: Any, args: tuple, kwargs: dict) -> None:
            x = args[0] if args else kwargs["input"]
            store[layer] = x[:, -1].detach().float().cpu().unflatten(-1, (g.n_heads, g.d_head))

        return fn

    specs = [HookSpec(lm.adapter.out_proj(layer), "pre", grab(layer)) for layer in range(g.n_layers)]
    with hooks(specs):
        logits = last_logits(lm, input_ids, attention_mask)
    return torch.stack([store[layer] for layer in range(g.n_layers)], dim=1), logits


# --------------------------------------------------------------------------- indirect effects
def _cache_of(out: Any) -> Any:
    cache = out.get("cache") if hasattr(out, "get") else None
    if cache is None:
        cache = getattr(out, "past_key_values", None)
    if cache is None:
        raise InputError("the model returned no KV cache", "the indirect-effect sweep needs a causal LM with use_cache")
    return cache


def head_cie(lm: Any, input_ids: torch.Tensor, target: int, mean_z: torch.Tensor, *,
             heads: Sequence[HeadId] | None = None, max_rows: int = 128) -> torch.Tensor:
    """Causal indirect effect [L, H] of each head on one (corrupted) prompt.

    ``input_ids`` is one unpadded prompt [T]; ``mean_z`` [L, H, d_head] the clean means. Entry (l, h) is
    ``p(target)`` with head (l, h)'s z at the last position set to ``mean_z[l, h]``, minus ``p(target)``
    unpatched (NaN for heads not in ``heads``). The prefix runs once; the last token is rerun with the
    cache repeated, one row per head plus one unpatched row in every chunk of ``max_rows``.
    """
    g = lm.geometry
    if input_ids.dim() != 1 or input_ids.shape[0] < 2:
        raise InputError("head_cie takes one prompt of at least two tokens", "pass a 1-D tensor of token ids")
    if tuple(mean_z.shape) != (g.n_layers, g.n_heads, g.d_head):
        raise InputError(f"mean z has shape {tuple(mean_z.shape)}; expected {(g.n_layers, g.n_heads, g.d_head)}",
                         "compute it with last_z on this model")
    todo = list(heads) if heads is not None else g.heads()
    for h in todo:
        g.check_head(h.layer, h.head)
    lm.check_length(int(input_ids.shape[0]))
    ids = input_ids.to(lm.device)[None]
    cie = torch.full((g.n_layers, g.n_heads), float("nan"))
    per_chunk = max(1, max_rows - 1)
    with torch.no_grad():
        cache = _cache_of(lm.model(input_ids=ids[:, :-1], use_cache=True))
        for start in range(0, len(todo), per_chunk):
            chunk = todo[start:start + per_chunk]
            k = len(chunk) + 1  # row 0: unpatched
            masks: dict[int, torch.Tensor] = {}
            for j, h in enumerate(chunk, start=1):
                masks.setdefault(h.layer, torch.zeros(k, 1, 1, g.n_heads, dtype=torch.bool))[j, 0, 0, h.head] = True
            values = {layer: mean_z[layer] for layer in masks}
            rows = copy.deepcopy(cache)
            rows.batch_repeat_interleave(k)
            with intervening(lm, [RowwiseReplace(masks=masks, values=values)]):
                out = lm.model(input_ids=ids[:, -1:].repeat(k, 1), cache=rows, use_cache=True, logits_to_keep=1)
            p = torch.softmax(out.logits[:, -1].float(), dim=-1)[:, target].cpu()
            for j, h in enumerate(chunk, start=1):
                cie[h.layer, h.head] = p[j] - p[0]
    return cie


def average_indirect_effect(lm: Any, prompts: Sequence[torch.Tensor], targets: Sequence[int], mean_z: torch.Tensor,
                            *, max_rows: int = 128) -> torch.Tensor:
    """AIE [L, H]: :func:`head_cie` averaged over corrupted ``prompts`` (1-D id tensors) and their ``targets``."""
    if len(prompts) != len(targets) or not prompts:
        raise InputError(f"{len(prompts)} prompts and {len(targets)} targets", "give one target per prompt, at least one")
    return torch.stack([head_cie(lm, p, int(t), mean_z, max_rows=max_rows) for p, t in zip(prompts, targets, strict=True)]).mean(0)


def top_heads(aie: torch.Tensor, k: int) -> list[HeadId]:
    """The ``k`` heads of largest AIE, best first (ties by layer, then head)."""
    n_layers, n_heads = aie.shape
    if not 1 <= k <= n_layers * n_heads:
        raise InputError(f"cannot choose {k} heads of {n_layers * n_heads}", "use a number between 1 and the head count")
    flat = torch.nan_to_num(aie.flatten(), nan=float("-inf"))
    order = sorted(range(flat.numel()), key=lambda i: (-float(flat[i]), i))[:k]
    return [HeadId(i // n_heads, i % n_heads) for i in order]


# --------------------------------------------------------------------------- the vector
def function_vector(lm: Any, mean_z: torch.Tensor, heads: Sequence[HeadId]) -> torch.Tensor:
    """``sum_{(l,h)} mean_z[l,h] @ W_O^l[h]`` [d_model] (float32, CPU): weight slices only, no bias."""
    g = lm.geometry
    v = torch.zeros(g.d_model)
    for h in heads:
        g.check_head(h.layer, h.head)
        w = lm.adapter.W_O(h.layer)[h.head].detach().float().cpu()  # [d_head, d_model]
        v += mean_z[h.layer, h.head].float() @ w
    return v


@contextmanager
def adding_vector(lm: Any, layer: int, vector: torch.Tensor, *, positions: str = "last",
                  scale: float = 1.0) -> Iterator[None]:
    """Add ``scale * vector`` to the output of block ``layer`` (the residual stream) in every forward pass:
    at the last position of each call (``"last"``: generated positions under a KV cache) or everywhere.
    ``vector`` is [d_model], or [B, d_model] with one vector per row of the batch."""
    g = lm.geometry
    g.check_layer(layer)
    if positions not in POSITIONS:
        raise InputError(f"unknown positions {positions!r}", f"use one of {POSITIONS}")
    if vector.dim() not in (1, 2) or vector.shape[-1] != g.d_model:
        raise InputError(f"the function vector has shape {tuple(vector.shape)}; {lm.name} needs ({g.d_model},)",
                         "use a vector fitted on this model")
    add = (scale * vector.float()).to(lm.layer_device(layer) if hasattr(lm, "layer_device") else lm.device)

    def fn(module: Any, args: tuple, kwargs: dict, output: Any) -> Any:
        h = output[0] if isinstance(output, tuple) else output
        if add.dim() == 2 and add.shape[0] != h.shape[0]:
            raise InputError(f"{add.shape[0]} per-row vectors for a batch of {h.shape[0]}", "give one vector per row")
        h = h.clone()
        a = add.to(h.dtype)
        if positions == "last":
            h[:, -1] += a
        else:
            h += a[:, None] if a.dim() == 2 else a
        return (h, *output[1:]) if isinstance(output, tuple) else h

    with hooks([HookSpec(lm.adapter.layer(layer), "forward", fn)]):
        yield


# --------------------------------------------------------------------------- the application
class FunctionVectors(Application):
    """A saved function vector: ``params`` = {layer, task, positions, scale}; tensors ``fv.<task>``."""

    name = "fv"
    title = "Function vectors"
    paper = "Todd et al. 2024 (ICLR; arXiv 2310.15213)"
    head_types = ("Function Vector Head",)

    def vector(self, artifact: HeadArtifact, task: str | None = None) -> torch.Tensor:
        """The vector of ``task`` (default: the artifact's ``params["task"]``)."""
        task = task or str(artifact.params.get("task", ""))
        key = f"fv.{task}"
        if key not in artifact.tensors:
            have = sorted(k[3:] for k in artifact.tensors if k.startswith("fv."))
            raise InputError(f"the fv artifact has no vector for task {task!r}", f"use one of {have}")
        return artifact.tensors[key]

    def apply(self, lm: Any, artifact: HeadArtifact) -> AbstractContextManager[None]:
        p = artifact.params
        return adding_vector(lm, int(p["layer"]), self.vector(artifact), positions=str(p.get("positions", "last")),
                             scale=float(p.get("scale", 1.0)))


FUNCTION_VECTORS = register_application(FunctionVectors())
