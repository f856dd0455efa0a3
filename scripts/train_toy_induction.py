"""Train the ``toy-induction`` ground-truth model that ships with headmine.

A 2-layer, 4-heads-per-layer, attention-only transformer trained on ``<bos> r r`` where ``r`` is a
uniform random sequence of content tokens. The only way to predict the second copy is in-context
repetition, which such a model learns with the classic two-head circuit: a previous-token head in
layer 0 and an induction head in layer 1 (K-composition). The result is a real HuggingFace Llama
checkpoint (``model_type: llama``) with its MLPs zeroed and frozen, so the library loads it like
any other model and every detector has a known answer to find.

Usage::

    python scripts/train_toy_induction.py [--out DIR] [--steps N] [--seed S]

Deterministic: one CPU thread, fixed seeds, deterministic algorithms. Takes about a minute of CPU
(1,600 steps at the defaults). Writes ``config.json``, ``generation_config.json``, ``model.safetensors``, ``tokenizer.json``,
``tokenizer_config.json``, ``training_report.json`` and ``README.md`` into the output folder.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "src" / "headmine" / "data" / "toy_induction"

N_CONTENT = 64
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]  # ids 0..3; content token t{k} has id 4 + k
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(4)
FIRST_CONTENT = len(SPECIALS)
VOCAB_SIZE = FIRST_CONTENT + N_CONTENT
N_LAYERS, N_HEADS, D_MODEL, D_HEAD = 2, 4, 64, 16
N_CTX = 128
D_MLP = 16  # present only because Llama has an MLP; zeroed and frozen

HEADMINE_NOTE = (
    "headmine toy-induction: 2-layer attention-only Llama trained on '<bos> r r' with r a uniform random "
    "sequence of {min_len}..{max_len} distinct tokens from t0..t63. Every MLP weight (gate_proj, up_proj, down_proj) is exactly zero and "
    "was frozen during training, so each MLP adds exactly 0 to the residual stream; post_attention_layernorm "
    "feeds only the MLP and was frozen too. Embeddings are untied (separate embed_tokens and lm_head). "
    "Ground truth: layer 1 holds induction heads, layer 0 holds previous-token heads; measured scores are "
    "in training_report.json. Retrain with scripts/train_toy_induction.py."
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """WordLevel over the specials and t0..t63, whitespace pre-tokenizer, ``<bos>`` prepended."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS + [f"t{k}" for k in range(N_CONTENT)])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B:1", special_tokens=[("<bos>", BOS_ID)]
    )
    tk.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins tokens with single spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=N_CTX,
    )


def build_config(min_len: int = 8, max_len: int = 40) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=D_MODEL,
        intermediate_size=D_MLP,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=N_HEADS,
        num_key_value_heads=N_HEADS,
        head_dim=D_HEAD,
        max_position_embeddings=N_CTX,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        attention_dropout=0.0,
        use_cache=False,
        dtype="float32",
        attn_implementation="eager",
        headmine_note=HEADMINE_NOTE.format(min_len=min_len, max_len=max_len),
    )


def make_attention_only(model: LlamaForCausalLM) -> None:
    """Zero every MLP weight and freeze the MLP and its pre-norm so the MLP adds exactly 0."""
    for layer in model.model.layers:
        for p in layer.mlp.parameters():
            with torch.no_grad():
                p.zero_()
            p.requires_grad_(False)
        for p in layer.post_attention_layernorm.parameters():
            p.requires_grad_(False)


def sample_batch(gen: torch.Generator, batch: int, length: int) -> torch.Tensor:
    """``<bos> r r`` for ``batch`` random ``r`` of ``length`` content tokens: shape (batch, 2*length+1).

    ``r`` is drawn uniformly among sequences of *distinct* content tokens (sampling without replacement),
    so every token of the second copy has exactly one earlier occurrence and induction is unambiguous.
    """
    r = torch.rand(batch, N_CONTENT, generator=gen).argsort(dim=1)[:, :length] + FIRST_CONTENT
    bos = torch.full((batch, 1), BOS_ID, dtype=torch.long)
    return torch.cat([bos, r, r], dim=1)


def split_losses(logits: torch.Tensor, ids: torch.Tensor, length: int) -> dict[str, torch.Tensor]:
    """Per-token cross-entropy split by the position of the predicted token.

    Positions: 0 is ``<bos>``, 1..L the first copy, L+1..2L the second copy. ``first_repeat`` averages the
    predictions of positions 1..L (unpredictable, chance is ln 64 = 4.16); ``second_repeat`` those of
    positions L+2..2L (predictable by induction); ``second_repeat_first_token`` position L+1, which is
    unpredictable because the length of r is random.
    """
    ce = F.cross_entropy(
        logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none"
    )  # ce[:, j] predicts j+1
    return {
        "all": ce.mean(),
        "first_repeat": ce[:, 0:length].mean(),
        "second_repeat_first_token": ce[:, length].mean(),
        "second_repeat": ce[:, length + 1 :].mean(),
    }


def head_scores(attentions: tuple[torch.Tensor, ...], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(induction, previous_token) scores, each (layers, heads), from eager attention patterns.

    induction: mean attention from i in the second copy (L+1..2L) to i-(L-1), the token after the
    earlier occurrence of token i. previous_token: mean A[i, i-1] over i = 1..2L.
    """
    pattern = torch.stack(attentions, dim=1)  # (batch, layers, heads, q, k)
    q = torch.arange(length + 1, 2 * length + 1)
    induction = pattern[..., q, q - (length - 1)].mean(dim=(0, -1))
    p = torch.arange(1, 2 * length + 1)
    previous = pattern[..., p, p - 1].mean(dim=(0, -1))
    return induction, previous


@torch.no_grad()
def evaluate(model: LlamaForCausalLM, seed: int, lengths: list[int], batch: int) -> dict:
    """Losses and per-head scores on held-out sequences (a generator independent of training)."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    sums: dict[str, float] = {}
    ind = torch.zeros(N_LAYERS, N_HEADS)
    prev = torch.zeros(N_LAYERS, N_HEADS)
    for length in lengths:
        ids = sample_batch(gen, batch, length)
        out = model(input_ids=ids, output_attentions=True)
        for k, v in split_losses(out.logits, ids, length).items():
            sums[k] = sums.get(k, 0.0) + float(v)
        i, p = head_scores(out.attentions, length)
        ind += i
        prev += p
    model.train()
    n = len(lengths)
    return {
        "losses": {k: v / n for k, v in sums.items()},
        "induction": (ind / n).tolist(),
        "previous_token": (prev / n).tolist(),
    }


def write_readme(out: Path, report: dict) -> None:
    rows = []
    for h in report["heads"]:
        rows.append(f"| {h['layer']} | {h['head']} | {h['induction']:.3f} | {h['previous_token']:.3f} |")
    losses = report["final_eval"]["losses"]
    text = f"""# toy-induction

A 2-layer attention-only transformer trained by `scripts/train_toy_induction.py` on `<bos> r r`, where `r`
is a uniform random sequence of {report["min_len"]}..{report["max_len"]} distinct tokens drawn from `t0`..`t{N_CONTENT - 1}`
(sampled without replacement, so each token of the second copy has exactly one earlier occurrence).
It is headmine's ground-truth model: layer 1 holds induction heads, layer 0 previous-token heads.

- Architecture: HuggingFace Llama (`LlamaForCausalLM`, `model_type: llama`), {N_LAYERS} layers x {N_HEADS} heads
  (`num_key_value_heads={N_HEADS}`), `hidden_size={D_MODEL}`, `head_dim={D_HEAD}`, RoPE, RMSNorm,
  `max_position_embeddings={N_CTX}`, vocab {VOCAB_SIZE} (`<pad>`=0, `<bos>`=1, `<eos>`=2, `<unk>`=3, `t<k>`=4+k), float32.
- Attention-only: every MLP weight (`gate_proj`, `up_proj`, `down_proj`, `intermediate_size={D_MLP}`) is exactly zero
  and was frozen (`requires_grad=False`) for the whole run, so each MLP adds exactly 0 to the residual stream.
  `post_attention_layernorm` feeds only the MLP and was frozen as well.
- Embeddings are untied: `model.embed_tokens` and `lm_head` are separate matrices.
- Tokenizer: `tokenizers` WordLevel, whitespace pre-tokenizer, `<bos>` prepended by the post-processor:
  `tok("t3 t7 t3").input_ids == [1, 7, 11, 7]`.
- Training: seed {report["seed"]}, {report["steps"]} steps of AdamW (lr {report["lr"]}, batch {report["batch"]}), loss on
  every next-token prediction, eager attention, one CPU thread, {report["cpu_time_s"]:.1f} s of CPU
  ({report["wall_time_s"]:.1f} s wall on a shared machine); training stops once the held-out second-repeat loss is
  below {report["target_loss"]}.

Held-out losses: first repeat {losses["first_repeat"]:.3f} nats (chance about ln 64 = 4.159), second repeat
(positions L+2..2L) {losses["second_repeat"]:.4f} nats, first token of the second copy {losses["second_repeat_first_token"]:.3f}
nats (unpredictable: the length of r is random).

Per-head scores on held-out sequences (induction: mean attention from position i of the second copy to the
token after the earlier occurrence, i-(len(r)-1); previous-token: mean A[i, i-1]):

| layer | head | induction | previous-token |
|---|---|---|---|
{chr(10).join(rows)}

Limits: the model only saw `r` of {report["min_len"]}..{report["max_len"]} distinct tokens. Keep probes inside that
range: longer `r` (RoPE positions beyond 2*{report["max_len"]}+1) weakens the induction heads, and `r` with repeated tokens
makes induction ambiguous (several earlier occurrences) and makes the first copy confidently mispredicted.
"""
    (out / "README.md").write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="checkpoint folder (replaced)")
    ap.add_argument("--steps", type=int, default=2500, help="maximum optimizer steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--min-len", type=int, default=8)
    ap.add_argument("--max-len", type=int, default=40)
    ap.add_argument(
        "--target-loss",
        type=float,
        default=0.01,
        help="stop early once the held-out second-repeat loss is below this (0 disables)",
    )
    ap.add_argument("--eval-every", type=int, default=200)
    args = ap.parse_args()
    if 2 * args.max_len + 1 > N_CTX:
        ap.error(f"--max-len {args.max_len} does not fit a context of {N_CTX}")

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    data_gen = torch.Generator().manual_seed(args.seed)
    eval_seed = args.seed + 10_000  # held-out sequences come from their own generator
    eval_lengths = [args.min_len, (args.min_len + args.max_len) // 2, args.max_len, 32]

    model = LlamaForCausalLM(build_config(args.min_len, args.max_len)).to(torch.float32)
    make_attention_only(model)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    warmup = min(100, args.steps // 10)

    def lr_at(step: int) -> float:  # linear warmup, cosine decay to 10%
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, args.steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    t0 = time.perf_counter()
    c0 = time.process_time()
    step = 0
    history = []
    while step < args.steps:
        length = int(torch.randint(args.min_len, args.max_len + 1, (1,), generator=data_gen))
        ids = sample_batch(data_gen, args.batch, length)
        logits = model(input_ids=ids).logits
        losses = split_losses(logits, ids, length)
        opt.zero_grad(set_to_none=True)
        losses["all"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        step += 1
        if step % args.eval_every == 0 or step == args.steps:
            ev = evaluate(model, eval_seed, eval_lengths, 64)
            el = ev["losses"]
            history.append({"step": step, **{k: round(v, 5) for k, v in el.items()}})
            print(
                f"step {step:5d}  train {losses['all'].item():.4f}  held-out first {el['first_repeat']:.4f}  "
                f"second {el['second_repeat']:.5f}  {time.perf_counter() - t0:6.1f}s",
                flush=True,
            )
            if args.target_loss > 0 and el["second_repeat"] < args.target_loss:
                break
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0

    # Check the attention-only invariant survived training, then measure on a larger held-out set.
    for layer in model.model.layers:
        assert all(not p.requires_grad and not p.any() for p in layer.mlp.parameters())
    final = evaluate(model, eval_seed + 1, [args.min_len, 16, 24, 32, args.max_len], 128)

    out: Path = args.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for p in model.parameters():  # the saved checkpoint carries no training state
        p.requires_grad_(True)
    model.config.use_cache = True
    model.save_pretrained(out)  # transformers 5 always writes safetensors
    build_tokenizer().save_pretrained(out)

    heads = [
        {
            "layer": layer,
            "head": h,
            "induction": round(final["induction"][layer][h], 4),
            "previous_token": round(final["previous_token"][layer][h], 4),
        }
        for layer in range(N_LAYERS)
        for h in range(N_HEADS)
    ]
    report = {
        "model": "toy-induction",
        "seed": args.seed,
        "steps": step,
        "max_steps": args.steps,
        "target_loss": args.target_loss,
        "batch": args.batch,
        "lr": args.lr,
        "min_len": args.min_len,
        "max_len": args.max_len,
        "wall_time_s": round(wall, 2),
        "cpu_time_s": round(cpu, 2),
        "threads": 1,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "final_eval": {
            "held_out_sequences": "128 per length, lengths "
            + ", ".join(map(str, [args.min_len, 16, 24, 32, args.max_len])),
            "losses": {k: round(v, 5) for k, v in final["losses"].items()},
        },
        "score_definitions": {
            "induction": "mean attention from i in the second copy (L+1..2L) to i-(L-1)",
            "previous_token": "mean A[i, i-1] over i = 1..2L",
        },
        "heads": heads,
        "history": history,
    }
    (out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    write_readme(out, report)

    print(
        f"done in {wall:.1f}s wall, {cpu:.1f}s CPU after {step} steps; held-out losses {report['final_eval']['losses']}"
    )
    for h in heads:
        print(
            f"  L{h['layer']}H{h['head']}  induction {h['induction']:.3f}  previous-token {h['previous_token']:.3f}"
        )
    print(f"saved to {out}: " + ", ".join(f"{f.name} ({f.stat().st_size} B)" for f in sorted(out.iterdir())))


if __name__ == "__main__":
    main()
