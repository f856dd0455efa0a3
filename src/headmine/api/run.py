"""The notebook verbs: ``load``, ``scan``, ``ablate``, ``patch``, ``attribute``, ``lens``, ``method``,
``gate``, ``factual``, ``mine`` and ``show_attention``.

Each verb is the CLI verb of the same name as a function: the same options with the same defaults,
run by the same pipeline job, but nothing is printed and nothing is written unless ``atlas=`` is
given. Every verb returns a :class:`~headmine.api.results.Result` (``mine`` returns an
:class:`~headmine.api.atlas_view.Atlas` of what it wrote). A model is given as a loaded model
(:func:`load`) or as anything :func:`load` accepts, so ``hm.scan("toy-induction")`` works too.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from headmine.api.atlas_view import Atlas
from headmine.api.figures import AttentionView
from headmine.api.results import Result
from headmine.capture import CaptureSpec, run_capture
from headmine.causal.head_gating import CHGConfig, load_data_file, task_data
from headmine.causal.methods import METHODS, MethodConfig, get_method
from headmine.core.errors import InputError
from headmine.core.ids import HeadId, Site
from headmine.detectors import resolve_detectors
from headmine.models.loading import DEFAULT_MODEL, LoadedModel, load_model
from headmine.pipeline.causal import run_causal
from headmine.pipeline.factual import FactualConfig, run_factual
from headmine.pipeline.gating import gate_model
from headmine.pipeline.mine import mine as run_mine
from headmine.pipeline.scan import ScanConfig, probe_sizes, scan_model

ModelLike = LoadedModel | str


def load(model: str = DEFAULT_MODEL, *, device: str = "cpu", dtype: str | torch.dtype = "float32",
         trust_remote_code: bool = False, revision: str | None = None) -> LoadedModel:
    """Load a model: an embedded name (``"smollm2"``, ``"toy-induction"``, ...), a ``.gguf`` file, a
    model folder or a hub id. ``device``: cpu, cuda, cuda:N or auto (accelerate spreads the layers
    over the GPUs); ``dtype``: float32, bfloat16 or float16 (or a torch dtype)."""
    return load_model(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code, revision=revision)


def _model(lm: ModelLike) -> LoadedModel:
    if isinstance(lm, LoadedModel):
        return lm
    if isinstance(lm, str | Path):
        return load(str(lm))
    raise InputError(f"expected a loaded model or a model name, got {type(lm).__name__}", "use hm.load('smollm2')")


def _saved(result: Result, atlas: str | Path | None) -> Result:
    if atlas is not None:
        result.run_id = result.save(str(atlas))
    return result


def scan(lm: ModelLike, *, detectors: list[str] | str | None = None, n: int | None = None, batch_size: int = 8,
         seed: int = 0, causal: bool = True, top_k: int | None = None, atlas: str | Path | None = None) -> Result:
    """Run the head detectors (one capture pass per probe task) and, with ``causal``, ablate each
    detector's top-k heads against k random heads on the task that defines its type.
    ``n``: sequences per probe task (repeated tokens, natural text, IOI)."""
    names = [detectors] if isinstance(detectors, str) else detectors
    dets = resolve_detectors(names)
    config = ScanConfig(detectors=tuple(names) if names else None, probe_params=probe_sizes(n), batch_size=batch_size,
                        seed=seed, causal=causal, top_k=top_k)
    job = scan_model(_model(lm), config)
    return _saved(Result(job, definitions={d.name: d.definition for d in dets}), atlas)


def method(name: str, lm: ModelLike, *, task: str, n: int = 32, seed: int = 0, metric: str | None = None,
           atlas: str | Path | None = None, **options: Any) -> Result:
    """Run any registered causal method by name (``hm.methods()`` lists them) with its own options."""
    m = get_method(name)
    declared = {f.name for f in fields(m.config_cls)}
    unknown = sorted(set(options) - declared)
    if unknown:
        extra = sorted(declared - {f.name for f in fields(MethodConfig)})
        raise InputError(f"method {m.name!r} has no option(s) {unknown}", f"its options: {', '.join(extra) or 'none'}")
    config = m.config(task=task, n=n, seed=seed, metric=metric, **{k: v for k, v in options.items() if v is not None})
    return _saved(Result(run_causal(_model(lm), config, method=m)), atlas)


def methods() -> list[str]:
    """The registered causal methods (built-in and plugins)."""
    return list(METHODS.names())


def ablate(lm: ModelLike, *, task: str, mode: str = "zero", reference: str = "self", n: int = 32, seed: int = 0,
           metric: str | None = None, atlas: str | Path | None = None) -> Result:
    """Ablate every head in turn (exact fast sweep): the metric's change per head. ``mode``: zero | mean |
    resample; ``reference`` (mean/resample): self or corrupted."""
    return method("ablation", lm, task=task, mode=mode, reference=reference, n=n, seed=seed, metric=metric, atlas=atlas)


def patch(lm: ModelLike, *, task: str, direction: str = "noising", per_position: bool = False,
          path_to: str | list[HeadId] | None = None, receiver_input: str = "qkv", n: int = 32, seed: int = 0,
          metric: str | None = None, atlas: str | Path | None = None) -> Result:
    """Activation patching per head between clean and corrupted prompts, or path patching into
    ``path_to`` ("logits" or receiver heads such as ``"L9H6,L9H9"``)."""
    if path_to is not None:
        return method("path_patching", lm, task=task, receivers=path_to, receiver_input=receiver_input, n=n, seed=seed,
                      metric=metric, atlas=atlas)
    return method("patching", lm, task=task, direction=direction, per_position=per_position, n=n, seed=seed,
                  metric=metric, atlas=atlas)


def attribute(lm: ModelLike, *, task: str, dla: bool = False, ig_steps: int = 0, n: int = 32, seed: int = 0,
              metric: str | None = None, atlas: str | Path | None = None) -> Result:
    """Attribution patching (one forward + backward; ``ig_steps`` > 0 for integrated gradients), or
    direct logit attribution with ``dla=True``."""
    if dla:
        return method("dla", lm, task=task, n=n, seed=seed, metric=metric, atlas=atlas)
    return method("attribution", lm, task=task, ig_steps=ig_steps, n=n, seed=seed, metric=metric, atlas=atlas)


def lens(lm: ModelLike, *, task: str, n: int = 32, seed: int = 0, metric: str | None = None,
         atlas: str | Path | None = None) -> Result:
    """Logit lens: the answer's probability and rank after every layer."""
    return method("logit_lens", lm, task=task, n=n, seed=seed, metric=metric, atlas=atlas)


def gate(lm: ModelLike, *, task: str | None = None, data: str | Path | None = None, n: int | None = None,
         preset: str = "quick", seed: int = 0, ablation: bool = True, agreement: bool = True,
         atlas: str | Path | None = None, **config: Any) -> Result:
    """Causal Head Gating on a built-in ``task`` or a ``data`` file (.jsonl prompt/target rows, or text).
    ``config`` overrides fields of the preset (e.g. ``seeds=3``, ``updates=(50, 50, 50)``)."""
    if (data is None) == (task is None):
        raise InputError("give exactly one of task= or data=", "e.g. hm.gate(lm, task='ioi')")
    model = _model(lm)
    cfg = CHGConfig.preset_for(preset, seed=seed, **config)
    n = cfg.rows if n is None else n  # the rows the preset was measured on
    prompts = None
    if data is not None:
        ds, name = load_data_file(model, data, limit=n), Path(data).name
    else:
        ds, prompts = task_data(model, str(task), n=n, seed=seed)
        name = str(task)
    job = gate_model(model, ds, cfg, task=name, prompts=prompts, ablation=ablation, agreement=agreement)
    return _saved(Result(job), atlas)


def factual(lm: ModelLike, *, atlas: str | Path | None = None, **config: Any) -> Result:
    """The factual-recall analysis (argument passing, MLP decomposition, final-layer suppression and a
    mitigation chosen on training facts, tested on held-out ones). ``config``: fields of FactualConfig."""
    known = {f.name for f in fields(FactualConfig)}
    bad = sorted(set(config) - known)
    if bad:
        raise InputError(f"unknown factual option(s) {bad}", f"valid options: {', '.join(sorted(known))}")
    return _saved(Result(run_factual(_model(lm), FactualConfig(**config))), atlas)


def mine(lm: ModelLike, *, atlas: str | Path = "atlas.db", budget: str = "quick", fresh: bool = False) -> Atlas:
    """The main job: scan, causal toolkit, CHG and factual recall, resumable, into ``atlas``; returns the
    atlas (its ``notes`` say which stages did not apply to the model)."""
    res = run_mine(_model(lm), atlas, budget=budget, fresh=fresh)
    view = Atlas(atlas)
    view.notes = list(res.notes)
    return view


def show_attention(lm: ModelLike, text: str, *, head: str | HeadId, query: int = -1) -> AttentionView:
    """One head's attention pattern on ``text`` as an inline view (the final query token chosen by
    default; ``query`` picks another position)."""
    model = _model(lm)
    h = HeadId.parse(head) if isinstance(head, str) else head
    model.geometry.check_head(h.layer, h.head)
    enc = model.tokenize([text])
    rec = run_capture(model, CaptureSpec(sites=frozenset({Site.PATTERN}), heads=(h,), keep_logits=False), **enc)
    pattern = rec.head_tensor(Site.PATTERN, h)[0].float().cpu().numpy()
    ids = enc["input_ids"][0].tolist()
    tokens = [model.tokenizer.decode([i]) for i in ids] if model.tokenizer is not None else [str(i) for i in ids]
    q = query if query >= 0 else len(ids) + query
    if not 0 <= q < len(ids):
        raise InputError(f"query position {query} is outside the {len(ids)} tokens", f"use 0..{len(ids) - 1} or -1")
    return AttentionView(head=str(h), tokens=tokens, pattern=pattern, query=q)
