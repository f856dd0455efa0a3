"""Exact per-head sweeps without L x H full forward passes.

An intervention on a head of layer ``l`` leaves layers ``< l`` untouched. ``PrefixCache`` runs the
clean batch once, keeping each decoder layer's input residual and the exact call arguments the model
passed to it (attention mask, rotary position embeddings, ...). ``PrefixCache.run_from(l, ...)``
then calls layers ``l..L-1`` directly, followed by the adapter's readout (final norm, unembedding,
soft-cap) *at the prediction positions only*. Many variants (one per head, per head and position, ...) are stacked
along the batch axis (variant-major: row ``v * B + b``) and run together.

``sweep_variants`` runs single-head variants; ``sweep_sets`` runs sets of heads replaced together (a detector's
top-k and random k-head draws). Both run in staggered waves: a wave starts at its earliest layer and each later
layer's items join the running batch there, so every item runs exactly its own layers and the products are large.
``sweep_variants`` also splits right-padded prompts by length, so no pad position is computed.

Variants are applied with ``RowwiseReplace``, an ``Intervention`` of the one engine
(``headmine.causal.engine.intervening``): per layer, a boolean site mask broadcastable to
``[k, B, T, H]`` and replacement values broadcastable to ``[k, B, T, H, d_head]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from headmine.capture.hooks import HookSpec, hooks
from headmine.causal.engine import intervening
from headmine.causal.interventions import Intervention
from headmine.causal.metrics import AnswerMetric
from headmine.core.errors import InputError
from headmine.core.ids import HeadId
from headmine.models.loading import LoadedModel

M = TypeVar("M")


# --------------------------------------------------------------------------- the intervention
@dataclass(frozen=True, kw_only=True)
class RowwiseReplace(Intervention):
    """Replace z where ``masks[layer]`` is set, with ``values[layer]``; rows are ``k`` stacked variants.

    ``masks[layer]``: bool, broadcastable to [k, B, T, H] (e.g. [k, 1, 1, H] one head per variant).
    ``values[layer]``: broadcastable to [k, B, T, H, d_head] (0-dim zero, a [1, B, T, H, d] source, a
    [H, d] mean, or a full [k, B, T, H, d] tensor). ``k`` is the leading size of the mask.
    """

    masks: Mapping[int, torch.Tensor] = field(default_factory=dict)
    values: Mapping[int, torch.Tensor] = field(default_factory=dict)

    def layers(self) -> set[int]:
        return set(self.masks)

    def apply(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        mask = self.masks[layer].to(z.device)
        k = mask.shape[0]
        r, t, h, d = z.shape
        if r % k:
            raise InputError(f"{r} rows cannot hold {k} stacked variants")
        z5 = z.view(k, r // k, t, h, d)
        val = self.values[layer].to(device=z.device, dtype=z.dtype)
        if val.dim() == 5 and val.shape[2] not in (1, t):
            raise InputError(f"replacement has {val.shape[2]} positions but the run has {t}", "use equal-length prompts")
        return torch.where(mask[..., None], val, z5).view(r, t, h, d)


# --------------------------------------------------------------------------- the prefix cache
def _expand(obj: Any, b: int, k: int) -> Any:
    """Stack ``k`` copies of every batch-shaped tensor (dim >= 2, leading size ``b``) in ``obj``."""
    if isinstance(obj, torch.Tensor):
        if k > 1 and obj.dim() >= 2 and obj.shape[0] == b:
            return obj.repeat(k, *([1] * (obj.dim() - 1)))
        return obj
    if isinstance(obj, tuple):
        return tuple(_expand(o, b, k) for o in obj)
    if isinstance(obj, list):
        return [_expand(o, b, k) for o in obj]
    if isinstance(obj, dict):
        return {key: _expand(o, b, k) for key, o in obj.items()}
    return obj


def _no_cache(obj: Any) -> Any:
    """Drop KV caches from captured layer arguments (a cache would grow on every direct call)."""
    name = type(obj).__name__
    return None if name.endswith("Cache") else obj


class PrefixCache:
    """One clean forward pass, remembered so any suffix of the layer stack can be rerun exactly."""

    def __init__(self, loaded: LoadedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 *, keep_layers: Iterable[int] | None = None) -> None:
        """``keep_layers``: the layers whose input residual is kept (default all); a sweep can start only at
        a kept layer. Keeping only the start layers of the items to sweep saves memory at long contexts."""
        g = loaded.geometry
        if loaded.adapter.unembedding() is None:
            raise InputError(f"{loaded.name} has no unembedding; this method needs a causal LM")
        loaded.check_length(input_ids.shape[-1])
        self.loaded = loaded
        self.input_ids = input_ids.to(loaded.device)
        self.attention_mask = (torch.ones_like(self.input_ids) if attention_mask is None else attention_mask.to(loaded.device))
        self.batch = int(self.input_ids.shape[0])
        self.resid: dict[int, torch.Tensor] = {}  # layer -> its input hidden states [B, T, D]
        self.call_args: dict[int, tuple[tuple[Any, ...], dict[str, Any]]] = {}  # layer -> its other arguments
        self._groups: list[tuple[torch.Tensor, PrefixCache]] | None = None

        keep = set(range(g.n_layers)) if keep_layers is None else set(keep_layers)

        def grab(i: int) -> Callable:
            def fn(module, args, kwargs):
                hidden = args[0] if args else kwargs["hidden_states"]
                if i in keep:
                    self.resid[i] = hidden.detach()
                rest = tuple(_no_cache(a) for a in args[1:])
                kw = {key: _no_cache(v) for key, v in kwargs.items() if key != "hidden_states"}
                if "use_cache" in kw:
                    kw["use_cache"] = False
                self.call_args[i] = (rest, kw)

            return fn

        specs = [HookSpec(loaded.adapter.layer(i), "pre", grab(i)) for i in range(g.n_layers)]
        with torch.no_grad(), hooks(specs):
            out = loaded.model(input_ids=self.input_ids, attention_mask=self.attention_mask, use_cache=False)
        self.logits = out.logits

    def length_groups(self) -> list[tuple[torch.Tensor, PrefixCache]]:
        """The batch split by prompt length: ``(rows, cache)`` with each group's prompts cut to their length.

        With right padding a pad position never changes a real one, so a sweep run per group computes the
        same numbers without the pads' share of the work (IOI prompts of 15-20 tokens padded to 20 are 20%
        pads). One clean forward per group builds its cache; a batch of one length (or any other padding)
        is one group, this cache itself.
        """
        if self._groups is None:
            lengths = self.attention_mask.sum(1)
            t = self.input_ids.shape[1]
            right_padded = bool((self.attention_mask == (torch.arange(t, device=lengths.device) < lengths[:, None])).all())
            if not right_padded or int(lengths.min()) == t:
                self._groups = [(torch.arange(self.batch), self)]
            else:
                self._groups = []
                for n in sorted({int(x) for x in lengths.tolist()}):
                    rows = torch.nonzero(lengths.cpu() == n).flatten()
                    self._groups.append((rows, PrefixCache(self.loaded, self.input_ids[rows, :n], self.attention_mask[rows, :n])))
        return self._groups

    def layer_call(self, i: int, hidden: torch.Tensor) -> torch.Tensor:
        k = hidden.shape[0] // self.batch
        rest, kw = self.call_args[i]
        out = self.loaded.adapter.layer(i)(hidden, *_expand(rest, self.batch, k), **_expand(kw, self.batch, k))
        return out[0] if isinstance(out, tuple) else out

    def unembed(self, hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Final norm + unembedding (+ soft-cap) of ``hidden`` [R, T, D] at per-row ``positions`` [R] -> [R, V]."""
        x = hidden[torch.arange(hidden.shape[0], device=hidden.device), positions.to(hidden.device)]
        return self.loaded.adapter.readout(x[:, None])[:, 0]

    def run_from(
        self,
        layer: int,
        k: int = 1,
        *,
        interventions: Sequence[Intervention] = (),
        hidden: torch.Tensor | None = None,
        stop: int | None = None,
        positions: torch.Tensor | None = None,
        extra_hooks: Sequence[HookSpec] = (),
    ) -> torch.Tensor:
        """Run layers ``layer..stop-1`` on ``k`` stacked copies of the cached input of ``layer``.

        Returns logits [k*B, V] at ``positions`` (per prompt, tiled; default: last real token), or,
        when ``stop`` is given, the residual [k*B, T, D] entering layer ``stop``.
        """
        g = self.loaded.geometry
        if hidden is None:
            hidden = self.resid[layer].repeat(k, 1, 1)
        end = g.n_layers if stop is None else stop
        with torch.no_grad(), intervening(self.loaded, interventions), hooks(list(extra_hooks)):
            for i in range(layer, end):
                hidden = self.layer_call(i, hidden)
        if stop is not None:
            return hidden
        if positions is None:
            positions = self.attention_mask.sum(1) - 1
        with torch.no_grad():
            return self.unembed(hidden, positions.repeat(k))


# --------------------------------------------------------------------------- generic sweep
CPU_WAVE_TOKENS = 2048
"""Tokens (rows x positions) per staggered wave on a CPU. Chosen on SmolLM2 (2 cores, single runs, not
quiet-checked): IOI [8, 15-20] took 35-42 s with waves of 64-128 rows (~1-2k tokens) and 41 s with 256-512 rows;
at [16, 128] waves of 512 rows took 93 s per 30 heads against 78 s for one variant (2,048 tokens) per wave:
larger products spill the activations out of the caches. A GPU has no such cap (``max_rows`` alone)."""

@dataclass(frozen=True)
class Variant:
    """One sweep variant: a head (or ``head=-1`` for every head of the layer) at ``positions``."""

    layer: int
    head: int
    position: int | None = None  # None = every position


def sweep_variants(
    cache: PrefixCache,
    metric: AnswerMetric,
    variants: Sequence[Variant],
    value_for: Callable[[int], torch.Tensor],
    *,
    max_rows: int = 512,
    extra: Callable[[int, int], Mapping[int, tuple[torch.Tensor, torch.Tensor]]] | None = None,
) -> torch.Tensor:
    """Metric [n_variants, B] with each variant's z replaced by ``value_for(layer)``.

    ``value_for(layer)`` returns values broadcastable to [k, B, T, H, d_head] (e.g. [1, B, T, H, d]).
    ``extra(layer, k)`` may add further (mask, values) pairs for later layers (path patching freezes);
    such sweeps run layer by layer (``_sweep_by_layer``). All others run per prompt length
    (``PrefixCache.length_groups``) in staggered waves (``_sweep_staggered``): the same numbers, without
    the pads' work and in larger matrix products.
    """
    g = cache.loaded.geometry
    t = cache.input_ids.shape[1]
    for v in variants:
        g.check_layer(v.layer)
        if v.head >= 0:
            g.check_head(v.layer, v.head)
        if v.position is not None and not 0 <= v.position < t:
            raise InputError(f"position {v.position} outside the {t}-token prompts")
    if extra is not None:
        return _sweep_by_layer(cache, metric, variants, value_for, max_rows, extra)
    groups = cache.length_groups()
    if len(groups) == 1:
        return _sweep_staggered(cache, metric, variants, value_for, max_rows)
    out = torch.empty(len(variants), cache.batch)
    for rows, sub in groups:
        n = sub.input_ids.shape[1]
        sub_metric = metric.select(rows)
        live = [i for i, v in enumerate(variants) if v.position is None or v.position < n]  # a pad changes nothing

        def group_value(layer: int, rows: torch.Tensor = rows, n: int = n) -> torch.Tensor:
            return _rows_of(value_for(layer), rows, n, cache.batch, t)

        res = _sweep_staggered(sub, sub_metric, [variants[i] for i in live], group_value, max_rows)
        block = sub_metric(sub.logits).cpu()[None].expand(len(variants), -1).clone()
        block[live] = res
        out[:, rows] = block
    return out


def _rows_of(value: torch.Tensor, rows: torch.Tensor, n: int, batch: int, t: int) -> torch.Tensor:
    """The part of a replacement value (broadcastable to [k, B, T, H, d]) for prompts ``rows`` cut to ``n`` tokens."""
    if value.dim() < 4:
        return value  # 0-dim, [H, d] or [T?, H, d] broadcasts unchanged only when it has no prompt axis
    if value.dim() != 5:
        raise InputError(f"a replacement value of shape {tuple(value.shape)} has no place in a per-prompt sweep",
                         "give values broadcastable to [k, B, T, H, d_head]")
    if value.shape[1] == batch and batch > 1:
        value = value[:, rows.to(value.device)]
    if value.shape[2] == t:
        value = value[:, :, :n]
    return value


def _variant_mask(placed: Sequence[tuple[int, Variant]], k: int, t: int, n_heads: int) -> torch.Tensor:
    """Bool [k, 1, T, H]: for each ``(row, variant)``, the variant's head (all heads for -1) at its position(s)."""
    mask = torch.zeros(k, 1, t, n_heads, dtype=torch.bool)
    for row, v in placed:
        mask[row, 0, slice(None) if v.position is None else v.position, slice(None) if v.head < 0 else v.head] = True
    return mask


def _wave_size(cache: PrefixCache, max_rows: int) -> int:
    """Items (each ``B`` rows) per staggered wave: ``max_rows`` rows, and on a CPU ``CPU_WAVE_TOKENS`` tokens."""
    b, t = cache.batch, cache.input_ids.shape[1]
    per_wave = max(1, max_rows // b)
    if cache.input_ids.device.type == "cpu":  # products past a few thousand tokens leave the CPU's caches
        per_wave = min(per_wave, max(1, CPU_WAVE_TOKENS // (b * t)))
    return per_wave


def _staggered_waves(
    cache: PrefixCache,
    first_layer: Sequence[int],
    rows_mask: Callable[[Sequence[int], int], torch.Tensor | None],
    value_for: Callable[[int], torch.Tensor],
    max_rows: int,
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Run items (variants, head sets) in waves; yield ``(items, hidden)`` per wave, ``hidden`` [len(items) * B,
    T, D] leaving the last layer, item ``items[j]`` in rows ``j * B .. (j + 1) * B - 1``.

    A wave starts at its earliest item's ``first_layer``; the items of each later layer join the running batch
    at their layer (copies of that layer's cached clean input), so one pass serves every layer of the wave and
    the matrix products grow to the wave's size instead of one layer's heads. ``rows_mask(in_flight, layer)``
    gives the site mask [len(in_flight), 1 or B, T, H] of the items in flight at ``layer`` (None: no item
    touches it); their replacement is ``value_for(layer)``.
    """
    g = cache.loaded.geometry
    order = sorted(range(len(first_layer)), key=lambda i: first_layer[i])
    per_wave = _wave_size(cache, max_rows)
    for start in range(0, len(order), per_wave):
        wave = order[start:start + per_wave]  # sorted by first layer: the running batch's row order
        first = first_layer[wave[0]]
        masks: dict[int, torch.Tensor] = {}
        values: dict[int, torch.Tensor] = {}
        for layer in range(first, g.n_layers):
            in_flight = [i for i in wave if first_layer[i] <= layer]
            mask = rows_mask(in_flight, layer)
            if mask is not None:
                masks[layer], values[layer] = mask, value_for(layer)
        hidden: torch.Tensor | None = None
        with torch.no_grad(), intervening(cache.loaded, [RowwiseReplace(masks=masks, values=values)]):
            for layer in range(first, g.n_layers):
                joining = sum(1 for i in wave if first_layer[i] == layer)
                if joining:
                    part = cache.resid[layer].repeat(joining, 1, 1)
                    hidden = part if hidden is None else torch.cat([hidden, part])
                assert hidden is not None
                hidden = cache.layer_call(layer, hidden)
        assert hidden is not None
        yield wave, hidden


def _sweep_staggered(cache: PrefixCache, metric: AnswerMetric, variants: Sequence[Variant],
                     value_for: Callable[[int], torch.Tensor], max_rows: int) -> torch.Tensor:
    """Variants in staggered waves (``_staggered_waves``), the metric read at ``metric.end_pos``."""
    g = cache.loaded.geometry
    b, t = cache.batch, cache.input_ids.shape[1]
    out = torch.empty(len(variants), b)

    def rows_mask(in_flight: Sequence[int], layer: int) -> torch.Tensor | None:
        here = [(j, variants[i]) for j, i in enumerate(in_flight) if variants[i].layer == layer]
        return _variant_mask(here, len(in_flight), t, g.n_heads) if here else None

    for wave, hidden in _staggered_waves(cache, [v.layer for v in variants], rows_mask, value_for, max_rows):
        logits = cache.unembed(hidden, metric.end_pos.repeat(len(wave)))
        out[wave] = metric.from_end_logits(logits).view(len(wave), b).cpu()
    return out


def sweep_sets(
    cache: PrefixCache,
    head_sets: Sequence[Sequence[HeadId]],
    value_for: Callable[[int], torch.Tensor],
    measure: Callable[[torch.Tensor], M],
    *,
    positions: torch.Tensor | None = None,
    readout_positions: torch.Tensor | None = None,
    max_rows: int = 512,
) -> list[M]:
    """``measure(logits)`` of each set of heads replaced together by ``value_for(layer)`` (e.g. the top-k heads
    of a detector and k-head random draws, mean-ablated or patched at once).

    ``positions``: LongTensor [B], one position per prompt where the replacement applies (None: every
    position). ``logits`` are [B, T, V] at every position, or [B, V] at ``readout_positions`` [B] when given
    (the unembedding of one position is ~1/8 of a SmolLM2 forward per position). Exactly what one forward per set with the
    same intervention gives; the sets run from their earliest layer in staggered waves. An empty set
    measures the clean run.
    """
    g = cache.loaded.geometry
    b, t = cache.batch, cache.input_ids.shape[1]
    for heads in head_sets:
        for h in heads:
            g.check_head(h.layer, h.head)
    if positions is None:
        sites = torch.ones(1, t, dtype=torch.bool)
    else:
        sites = torch.zeros(b, t, dtype=torch.bool)
        sites[torch.arange(b), positions.cpu().long()] = True
    by_layer = [{layer: [h.head for h in heads if h.layer == layer] for layer in {h.layer for h in heads}} for heads in head_sets]

    def rows_mask(in_flight: Sequence[int], layer: int) -> torch.Tensor | None:
        here = [(j, by_layer[i][layer]) for j, i in enumerate(in_flight) if layer in by_layer[i]]
        if not here:
            return None
        mask = torch.zeros(len(in_flight), sites.shape[0], t, g.n_heads, dtype=torch.bool)
        for j, heads in here:
            mask[j][..., heads] = sites[..., None]
        return mask

    def logits_of(hidden: torch.Tensor) -> torch.Tensor:
        if readout_positions is None:
            with torch.no_grad():
                return cache.loaded.adapter.readout(hidden)
        return cache.unembed(hidden, readout_positions)

    out: list[Any] = [None] * len(head_sets)
    live = [i for i, heads in enumerate(head_sets) if heads]
    clean = cache.logits if readout_positions is None else cache.logits[torch.arange(b), readout_positions.to(cache.logits.device)]
    for i in range(len(head_sets)):
        if not head_sets[i]:
            out[i] = measure(clean)
    first = [min(by_layer[i]) for i in live]
    for wave, hidden in _staggered_waves(cache, first, lambda fl, layer: rows_mask([live[i] for i in fl], layer),
                                         value_for, max_rows):
        for j, i in enumerate(wave):
            out[live[i]] = measure(logits_of(hidden[j * b:(j + 1) * b]))
    return out


def _sweep_by_layer(cache: PrefixCache, metric: AnswerMetric, variants: Sequence[Variant],
                    value_for: Callable[[int], torch.Tensor], max_rows: int,
                    extra: Callable[[int, int], Mapping[int, tuple[torch.Tensor, torch.Tensor]]]) -> torch.Tensor:
    """Variants grouped by layer, ``max_rows // B`` at a time from that layer's cached input, with ``extra``
    (mask, values) pairs for later layers per group."""
    g = cache.loaded.geometry
    b, t = cache.batch, cache.input_ids.shape[1]
    out = torch.empty(len(variants), b)
    by_layer: dict[int, list[int]] = {}
    for i, v in enumerate(variants):
        by_layer.setdefault(v.layer, []).append(i)
    per_chunk = max(1, max_rows // b)
    for layer, idx in sorted(by_layer.items()):
        value = value_for(layer)
        for start in range(0, len(idx), per_chunk):
            chunk = idx[start:start + per_chunk]
            k = len(chunk)
            masks = {layer: _variant_mask([(j, variants[i]) for j, i in enumerate(chunk)], k, t, g.n_heads)}
            values = {layer: value}
            for lay, (m, val) in extra(layer, k).items():
                masks[lay], values[lay] = m, val
            logits = cache.run_from(layer, k, interventions=[RowwiseReplace(masks=masks, values=values)],
                                    positions=metric.end_pos)
            out[chunk] = metric.from_end_logits(logits).view(k, b).cpu()
    return out


def head_variants(loaded: LoadedModel, heads: Sequence[Any] | None = None, *, per_position: int | None = None) -> list[Variant]:
    """All heads (or ``heads``), optionally crossed with positions ``0..per_position-1``."""
    g = loaded.geometry
    pairs = [(h.layer, h.head) for h in (heads if heads is not None else g.heads())]
    if per_position is None:
        return [Variant(layer, head) for layer, head in pairs]
    return [Variant(layer, head, p) for layer, head in pairs for p in range(per_position)]
