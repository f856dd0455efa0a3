"""Shared pieces of the factual-recall analyses: the fact batch contract, the logit lens readout and
the per-component "written" contributions.

Fact batch contract. Every analysis takes a :class:`~headmine.tasks.base.TokenBatch` whose meta holds
``target_id`` LongTensor [B] (the single-token answer), ``end_pos`` LongTensor [B] (the last prompt
token, where the answer is predicted), ``subject_span`` LongTensor [B, 2] (token positions of the
subject, end exclusive) and ``relation`` list[str] of length B. ``few_shot`` / ``shots`` (int [B]) is
optional. :func:`check_fact_batch` validates this and raises :class:`TaskError` otherwise.

Readout ("logit lens"): :func:`headmine.causal.logit_lens.lens_logits` (the model's own final norm
and unembedding, then Gemma-style soft-capping), so the layer ``n_layers`` readout equals the logits.

Decoding: :func:`decode_direction` reads a residual direction through the final norm's gain (with
the mean removed on LayerNorm models) and the unembedding; :func:`final_scale` is what the final norm
divides a run's residual by. Both come from the adapter's :class:`~headmine.models.norms.NormSpec`.

Written contributions. Llama-style blocks add ``attn_out`` and ``mlp_out`` to the residual stream
as they are. Gemma 2/3 blocks pass both through an RMSNorm first ("sandwich" norms, declared by the
adapter's ``attn_post_norm`` / ``mlp_post_norm``). :func:`written_attn` / :func:`written_mlp`
return what really enters the residual stream; per-head contributions are linearised with the norm
scale of the whole block output (they sum exactly to the block's contribution when the projection
has no bias).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from headmine.causal.metrics import bootstrap_ci as bootstrap_ci  # re-exported: the factual analyses' CI
from headmine.core.errors import TaskError
from headmine.models.base import submodule
from headmine.models.loading import LoadedModel
from headmine.tasks.base import TokenBatch

REQUIRED_META = ("target_id", "end_pos", "subject_span", "relation")


def check_fact_batch(batch: TokenBatch) -> None:
    """TaskError unless ``batch`` carries the fact meta every analysis needs."""
    missing = [k for k in REQUIRED_META if k not in batch.meta]
    if missing:
        raise TaskError(
            f"the fact batch lacks meta {missing} (has {sorted(batch.meta)})",
            "build it with the factual task (single-token answers, subject spans, relation names)",
        )
    if len(batch) == 0:
        raise TaskError("the fact batch is empty", "give at least one relation with facts")
    span = batch.meta["subject_span"]
    if not isinstance(span, torch.Tensor) or span.shape != (len(batch), 2):
        raise TaskError("meta subject_span must be a LongTensor [B, 2]", "one (start, end) span per prompt")


def sub_batches(batch: TokenBatch, batch_size: int) -> Iterator[TokenBatch]:
    """Sub-batches trimmed to their own longest row (right padding makes this safe)."""
    for sub in batch.split(batch_size):
        width = int(sub.lengths.max())
        yield TokenBatch(input_ids=sub.input_ids[:, :width], attention_mask=sub.attention_mask[:, :width],
                         meta=sub.meta, texts=sub.texts, task=sub.task, params=sub.params)


def rows_at(t: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """``t[b, pos[b]]`` for a [B, T, ...] tensor."""
    return t[torch.arange(t.shape[0], device=t.device), pos.to(t.device)]


# --------------------------------------------------------------------------- readout
# the logit lens readout itself is headmine.causal.logit_lens.lens_logits (final norm + unembedding + soft-cap)
def decode_direction(lm: LoadedModel, v: torch.Tensor) -> torch.Tensor:
    """Direct logit effect of residual-stream directions ``v [..., d_model]``: ``(centre(v) * final gain) @ W_U``
    (centring only on LayerNorm models), in ``v``'s dtype.

    Linear in ``v`` (no division by the final norm's scale): use it for directions and correlations,
    and divide by the final scale of a run (:func:`final_scale`) for a linearised direct logit
    attribution; that equals the final norm's linearisation (scale frozen at the run's residual).
    """
    spec = lm.adapter.final_norm_spec()
    w_u = lm.adapter.W_U()
    v = v.to(w_u.device)  # the unembedding's device: the last one when layers are spread over several
    x = v if spec is None else spec.direction(v).to(v.dtype)
    return x @ w_u.to(v.dtype)


def final_scale(lm: LoadedModel, resid_final: torch.Tensor) -> torch.Tensor:
    """What the final norm divides ``resid_final`` [..., d_model] by, [...] in float32: the RMS (RMSNorm)
    or the standard deviation (LayerNorm), with the norm's eps; ones without a final norm."""
    spec = lm.adapter.final_norm_spec()
    if spec is None:
        return torch.ones(resid_final.shape[:-1], device=resid_final.device)
    return spec.scale(resid_final)[..., 0]


# --------------------------------------------------------------------------- written contributions
def written_attn(lm: LoadedModel, layer: int, attn_out: torch.Tensor) -> torch.Tensor:
    """What the attention block of ``layer`` adds to the residual stream, from its raw output."""
    norm = lm.adapter.attn_post_norm(layer)
    return attn_out if norm is None else norm(attn_out)


def written_mlp(lm: LoadedModel, layer: int, mlp_out: torch.Tensor) -> torch.Tensor:
    """What the MLP of ``layer`` adds to the residual stream, from its raw output."""
    norm = lm.adapter.mlp_post_norm(layer)
    return mlp_out if norm is None else norm(mlp_out)


def written_heads(lm: LoadedModel, layer: int, result: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
    """Per-head residual contributions ``[..., head, d_model]`` from ``result`` ``[..., head, d_model]``.

    Under a post-attention norm the head outputs go through that norm linearised at ``attn_out`` (its
    scale on the full block output, frozen): a linearisation that sums to the block's contribution.
    """
    spec = lm.adapter.attn_post_norm_spec(layer)
    if spec is None:
        return result
    return spec.linearised(attn_out)(result).to(result.dtype)


def answer_stats(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(probability, rank (0 = top-1), log-probability) of ``target`` [B] under ``logits`` [B, ..., vocab].

    Extra middle axes (e.g. layers) broadcast: target is indexed along the last axis.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    idx = target.view(-1, *([1] * (logits.dim() - 1))).expand(*logits.shape[:-1], 1).to(logits.device)
    tl = logits.float().gather(-1, idx)
    rank = (logits.float() > tl).sum(-1)
    lp = logp.gather(-1, idx).squeeze(-1)
    return lp.exp(), rank, lp


def as_list(x: Any) -> list[Any]:
    return x.tolist() if isinstance(x, torch.Tensor) else list(x)


def concat_batches(batches: list[TokenBatch]) -> TokenBatch:
    """Stack fact batches of different widths (right padding; per-row meta concatenated, [B, k] tensors too)."""
    if len(batches) == 1:
        return batches[0]
    width = max(b.input_ids.shape[1] for b in batches)
    pad = int(batches[0].input_ids[0, -1]) if batches[0].attention_mask[0, -1] == 0 else 0

    def widen(t: torch.Tensor, fill: int) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=fill)

    ids = torch.cat([widen(b.input_ids, pad) for b in batches])
    mask = torch.cat([widen(b.attention_mask, 0) for b in batches])
    meta: dict[str, Any] = {}
    for key in batches[0].meta:
        vals = [b.meta.get(key) for b in batches]
        tensors = [v for v in vals if isinstance(v, torch.Tensor) and v.ndim >= 1]
        lists = [v for v in vals if isinstance(v, list)]
        if len(tensors) == len(batches) and all(v.shape[0] == len(b) for v, b in zip(tensors, batches, strict=True)):
            meta[key] = torch.cat(tensors)
        elif len(lists) == len(batches) and all(len(v) == len(b) for v, b in zip(lists, batches, strict=True)):
            meta[key] = [x for v in lists for x in v]
    text_lists = [b.texts for b in batches if b.texts is not None]
    texts = [t for ts in text_lists for t in ts] if len(text_lists) == len(batches) else None
    return TokenBatch(input_ids=ids, attention_mask=mask, meta=meta, texts=texts, task=batches[0].task,
                      params={"parts": [b.params for b in batches]})


def dedupe(batch: TokenBatch) -> TokenBatch:
    """Drop repeated prompts (identical token ids), keeping the first."""
    seen, keep = set(), []
    for i in range(len(batch)):
        key = tuple(batch.input_ids[i, : int(batch.lengths[i])].tolist())
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return batch if len(keep) == len(batch) else batch.select(keep)


def end_logits(lm: LoadedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, end_pos: torch.Tensor) -> torch.Tensor:
    """Logits [B, vocab] at each row's ``end_pos`` only (the decoder runs, the unembedding only at those rows).

    Same values as the model's logits there (the base model's output is already final-normed); avoids
    [B, T, vocab] tensors for large vocabularies (Gemma: 262k). Active hooks/interventions apply.
    """
    lm.check_length(input_ids.shape[-1])
    out = submodule(lm.model, "base_model")(input_ids=input_ids.to(lm.device), attention_mask=attention_mask.to(lm.device))
    return lm.adapter.unembed(rows_at(out.last_hidden_state, end_pos))
