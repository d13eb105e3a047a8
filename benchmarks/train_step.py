"""Train-step throughput: tokens/s, GFLOP/s and the fraction of the matmul peak measured in the same run.

    python benchmarks/train_step.py [--size tiny|small|7b-layer] [--steps 10] [--no-torch]
                                    [--profile DIR] [--config.k=v ...]

Sizes (float32, synthetic packed batches, AdamW; ``--config.*`` overrides any run-config key):

* ``tiny``: ``configs/tiny.py`` (LLM 256 × 2 layers, batch 8 × 128).
* ``small``: LLM 512 wide × 8 layers (8 heads, 2 KV heads, MLP 1408, vocabulary 8192), a 3-layer
  audio head, the released codebooks (1024 … 128); batch 4 × 512.
* ``7b-layer``: one decoder layer of the 7B geometry (3584 wide, 28 heads, 4 KV heads, MLP 18944)
  at batch 1 × 1024, forward + backward + AdamW of that layer only (the full 7B audio head does
  not fit next to it on a small machine).

In one process the script

1. measures the peak: the median time of a jitted float32 2048³ matmul (JAX, and torch if present);
2. compiles the real train step (``training.train_step.build_program``) and times ``--steps`` steps
   after two warm-up steps: tokens/s (non-padding positions), model GFLOP/s
   (``Task.flops_per_step``) and their fraction of the JAX peak;
3. times each component of the step as its own jitted forward + backward program (embeddings,
   the decoder layers, of which the attention core, LM head + text CE, audio head + audio CE,
   optimizer update), with its FLOPs and its fraction of the peak; the components add up to about
   the whole step (the remainder is what XLA overlaps or fuses across them);
4. with torch installed, runs the same step in PyTorch (``benchmarks/torch_audio_llm.py``: the
   reference's op order, weights copied from the JAX model, same batches and schedule), checks
   that the losses agree step by step and reports the ratio of tokens/s and torch's own fraction
   of its measured matmul peak.

``--profile DIR`` also writes a ``jax.profiler`` trace of three steps (Perfetto/TensorBoard) and
prints the step's op time by component, each HLO op attributed through its Python stack
(``benchmarks/profile_breakdown.py``; the step's named scopes are ``forward_backward`` and
``optimizer``).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from baichuan_audio_jax.config import ModelConfig  # noqa: E402
from baichuan_audio_jax.layers.attention import causal_mask, dot_product_attention, segment_mask  # noqa: E402
from baichuan_audio_jax.layers.stack import run_stack, stacked  # noqa: E402
from baichuan_audio_jax.models.audio_llm import DecoderLayer  # noqa: E402
from baichuan_audio_jax.training.data_sources import build_iterator  # noqa: E402
from baichuan_audio_jax.training.losses import audio_ce_sum, text_ce_sum  # noqa: E402
from baichuan_audio_jax.training.mesh import describe, mesh_from_config  # noqa: E402
from baichuan_audio_jax.training.optimizer import apply_updates  # noqa: E402
from baichuan_audio_jax.training.train_step import build_program  # noqa: E402
from benchmarks.profile_breakdown import breakdown  # noqa: E402
from benchmarks.sizes import SIZES, size_config  # noqa: E402


def median_time(fn, repeats: int) -> float:
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of a jitted float32 n×n×n matmul (median of ``repeats``)."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    return 2 * n ** 3 / median_time(lambda: f(a, b), repeats)


def torch_matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    import torch  # lazy: optional baseline

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / statistics.median(times)


# ----------------------------------------------------------------------------- components

def component_programs(program, state, batch):
    """{name: (jitted thunk, model FLOPs)}: each piece of the step as forward + backward."""
    cfg, mc = program.config, program.model_cfg
    c = mc.llm
    b, s = batch["input_ids"].shape
    graphdef, params, rest = program.graphdef, state.params, state.model_state
    max_pos = int(cfg.train.max_audio_positions) or s
    max_pos = min(max_pos, s)
    h, nh, kv, d = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim
    layer_w = h * nh * d + 2 * h * kv * d + nh * d * h + 3 * h * c.intermediate_size
    attn_core = 2 * s * nh * d  # per token per layer: QK^T and PV (2·2·S·heads·head_dim), the causal half
    head_cfg = mc.audio_head
    head_w = head_cfg.num_layers * len(mc.codebook_sizes) * (4 * h * h + 4 * h * h)
    cls_w = h * sum(sz + 1 for sz in mc.codebook_sizes)
    tokens = b * s

    def grad_of(loss, diff_keys):
        """jit(grad) of loss(model, *inputs) w.r.t. params[diff_keys] and the float inputs."""
        diff = {k: params[k] for k in diff_keys}
        fixed = {k: v for k, v in params.items() if k not in diff_keys}

        def f(diff, fixed, *inputs):
            model = nnx.merge(graphdef, {**fixed, **diff}, rest)
            return loss(model, *inputs)

        def run(*inputs):
            argnums = (0,) + tuple(2 + i for i, x in enumerate(inputs) if jnp.issubdtype(x.dtype, jnp.floating))
            return jax.grad(f, argnums=argnums)(diff, fixed, *inputs)

        return jax.jit(run)

    hidden = jax.random.normal(jax.random.key(2), (b, s, h), jnp.float32)
    ct = jax.random.normal(jax.random.key(3), (b, s, h), jnp.float32)
    mask = jnp.broadcast_to(causal_mask(s) & segment_mask(batch["segment_ids"]), (b, s, s))

    def embed_loss(model, ids, codes, ct):
        return jnp.sum(model.embed(ids, codes) * ct)

    def layers_loss(model, x, positions, mask, ct):
        def body(layer, carry, _):
            return layer(carry, positions, mask, None, None)
        y, _ = run_stack(model.layers, x, body, scan=mc.scan_layers, remat_policy=mc.remat_policy)
        return jnp.sum(y * ct)

    def text_loss(model, x, targets, weights):
        return text_ce_sum(model, x, targets, weights, int(cfg.train.loss_chunk_size))

    def audio_loss(model, x, targets, weights):
        return audio_ce_sum(model, x, targets, weights, max_pos)[0]

    g = jax.random.normal(jax.random.key(4), (b, s, nh, d), jnp.float32)
    qkv = [jax.random.normal(jax.random.key(5 + i), (b, s, n, d), jnp.float32) for i, n in enumerate((nh, kv, kv))]
    attn = jax.jit(jax.grad(lambda q, k, v: jnp.sum(dot_product_attention(q, k, v, mask, d ** -0.5) * g),
                            argnums=(0, 1, 2)))

    tx, labels = program.tx, program.labels

    def optimizer(p, o, grads):
        updates, o = tx.update(grads, o, p)
        return apply_updates(p, updates, labels), o

    opt = jax.jit(optimizer)
    grads = jax.tree.map(jnp.ones_like, params)
    fns = {}
    if "embed_tokens" in params:
        fe = grad_of(embed_loss, ("embed_tokens", "audio_embed"))
        fns["embeddings (text + 8 audio tables)"] = (
            lambda: fe(batch["input_ids"], batch["audio_codes"], ct), 0.0)
    fl = grad_of(layers_loss, ("layers",))
    fns["decoder layers (attention + MLP)"] = (
        lambda: fl(hidden, batch["positions"], mask, ct), 3.0 * tokens * c.num_layers * (2 * layer_w + attn_core))
    fns["  of which the attention core, x layers"] = (
        lambda: [attn(*qkv) for _ in range(c.num_layers)][-1], 3.0 * tokens * c.num_layers * attn_core)
    ft = grad_of(text_loss, ("lm_head",) if "lm_head" in params else ("embed_tokens",))
    fns["LM head + text CE"] = (
        lambda: ft(hidden, batch["text_targets"], batch["text_weights"]), 3.0 * tokens * 2 * h * c.vocab_size)
    fa = grad_of(audio_loss, ("audio_head", "audio_embed"))
    fns[f"audio head + audio CE ({max_pos} positions/row)"] = (
        lambda: fa(hidden, batch["audio_targets"], batch["audio_weights"]),
        3.0 * b * max_pos * 2 * (head_w + cls_w))
    opt_state = state.opt_state
    fns["optimizer (clip + AdamW + apply)"] = (lambda: opt(params, opt_state, grads), 0.0)
    return fns


def useful_flops(program, batches) -> float:
    """Model FLOPs of the step counting the audio head only at positions that carry audio weight."""
    mc, cfg = program.model_cfg, program.config
    s = program.seq_len
    h = mc.llm.hidden_size
    max_pos = min(int(cfg.train.max_audio_positions) or s, s)
    head_w = mc.audio_head.num_layers * len(mc.codebook_sizes) * 8 * h * h + h * sum(
        sz + 1 for sz in mc.codebook_sizes)
    real = np.mean([np.sum(np.minimum(np.any(np.asarray(bt["audio_weights"]) > 0, -1).sum(-1), max_pos))
                    for bt in batches])
    evaluated = program.rows * max_pos
    return program.flops_per_step - 3.0 * (evaluated - real) * 2 * head_w


def seven_b_layer(config, peak: float, known, argv) -> int:
    """One decoder layer of the 7B geometry: forward + backward and its AdamW update."""
    mc = ModelConfig.from_config(config.model)
    c = mc.llm
    b, s = int(config.data.batch_size), int(config.data.seq_len)
    with nnx.use_eager_sharding(False):
        layers = stacked(lambda r: DecoderLayer(mc, rngs=r), c.num_layers, nnx.Rngs(0))
    graphdef, params = nnx.split(layers)
    params = nnx.to_pure_dict(params)
    x = jax.random.normal(jax.random.key(1), (b, s, c.hidden_size), jnp.float32)
    ct = jax.random.normal(jax.random.key(2), (b, s, c.hidden_size), jnp.float32)
    positions = jnp.broadcast_to(jnp.arange(s)[None], (b, s))
    mask = jnp.broadcast_to(causal_mask(s), (b, s, s))

    def loss(p, x):
        def body(layer, carry, _):
            return layer(carry, positions, mask, None, None)
        y, _ = run_stack(nnx.merge(graphdef, p), x, body, scan=mc.scan_layers, remat_policy=mc.remat_policy)
        return jnp.sum(y * ct)

    fb = jax.jit(jax.grad(loss, argnums=(0, 1)))
    tx = optax.adamw(1e-4)
    opt_state = tx.init(params)
    upd = jax.jit(lambda p, o, g: (lambda u_o: (optax.apply_updates(p, u_o[0]), u_o[1]))(tx.update(g, o, p)))
    h, nh, kv, d = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim
    layer_w = h * nh * d + 2 * h * kv * d + nh * d * h + 3 * h * c.intermediate_size
    flops = 3.0 * b * s * c.num_layers * (2 * layer_w + 2 * s * nh * d)
    t = median_time(lambda: fb(params, x), known.repeats)
    g = fb(params, x)[0]
    to = median_time(lambda: upd(params, opt_state, g), known.repeats)
    print(f"7B-shaped decoder layer (H={h}, MLP {c.intermediate_size}, {nh}/{kv} heads), batch {b} × {s}, "
          f"{mc.dtype}: forward + backward {t * 1e3:.0f} ms = {flops / t / 1e9:.1f} GFLOP/s = "
          f"{100 * flops / t / peak:.1f}% of the JAX matmul peak; AdamW update {to * 1e3:.0f} ms "
          f"({100 * to / (t + to):.0f}% of layer + update)")
    cmd = "python benchmarks/train_step.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    print("\ndocs row (what | tokens/s | fraction of the same-run matmul peak | command):")
    print(f"| 7B-shaped decoder layer fwd+bwd, B={b}×S={s}, {mc.dtype} | {b * s / t:,.0f} | "
          f"{100 * flops / t / peak:.1f}% | `{cmd}` |")
    return 0


# ----------------------------------------------------------------------------- main

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="small")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5, help="timed runs per component (median)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch baseline")
    p.add_argument("--no-breakdown", action="store_true")
    p.add_argument("--profile", default="", help="write a jax.profiler trace of 3 steps here")
    known, rest = p.parse_known_args(argv)
    config = size_config(known.size, rest)
    use_torch = not known.no_torch and known.size != "7b-layer"
    if use_torch:
        try:
            import torch  # noqa: F401  # lazy: optional baseline
        except ImportError:
            use_torch = False
            print("torch not installed: no PyTorch baseline")

    peak = matmul_peak()
    print(f"jax {jax.__version__}, {os.cpu_count()} CPU cores; measured float32 matmul peak: "
          f"JAX {peak / 1e9:.1f} GFLOP/s", end="")
    tpeak = torch_matmul_peak() if use_torch else 0.0
    print(f", torch {tpeak / 1e9:.1f} GFLOP/s" if use_torch else "")

    if known.size == "7b-layer":
        return seven_b_layer(config, peak, known, argv)
    mesh = mesh_from_config(config.mesh)
    program = build_program(config, mesh)
    mc = program.model_cfg
    state = program.init()
    it = build_iterator(config)
    host_batches = [next(it) for _ in range(known.steps + 2)]
    batches = [{k: jax.device_put(v, program.batch_shardings[k]) for k, v in hb.items()} for hb in host_batches]

    rows_out = []
    jax_losses = []
    t0 = time.perf_counter()
    for bt in batches[:2]:
        state, metrics = program.step(state, bt)
        jax_losses.append(metrics["loss"])
    jax.block_until_ready(metrics)
    print(f"compile + 2 warm-up steps: {time.perf_counter() - t0:.1f} s")
    tokens = sum(program.task.tokens(hb) for hb in host_batches[2:])
    t0 = time.perf_counter()
    for bt in batches[2:]:
        state, metrics = program.step(state, bt)
        jax_losses.append(metrics["loss"])
    jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - t0) / known.steps
    jax_losses = [float(x) for x in jax_losses]
    achieved = program.flops_per_step / seconds
    useful = useful_flops(program, host_batches) / seconds
    tok_s = tokens / known.steps / seconds
    print(f"train step: {seconds * 1e3:.1f} ms, {tok_s:,.0f} tokens/s, {achieved / 1e9:.1f} GFLOP/s model "
          f"= {100 * achieved / peak:.1f}% of the JAX matmul peak ({useful / 1e9:.1f} GFLOP/s = "
          f"{100 * useful / peak:.1f}% counting the audio head only at real audio positions; mesh {describe(mesh)})")
    rows_out.append(("JAX train step", tok_s, achieved / peak))

    if not known.no_breakdown:
        fns = component_programs(program, state, batches[0])
        total = 0.0
        print(f"\ncomponents (forward + backward, each its own jitted program, median of {known.repeats}):")
        print(f"  {'component':46s} {'ms':>8s} {'GFLOP/s':>8s} {'% peak':>7s}")
        for name, (fn, flops) in fns.items():
            t = median_time(fn, known.repeats)
            if not name.startswith(" "):
                total += t
            rate = f"{flops / t / 1e9:8.1f} {100 * flops / t / peak:6.1f}%" if flops else f"{'':8s} {'':7s}"
            print(f"  {name:46s} {t * 1e3:8.1f} {rate}")
        print(f"  {'sum of components':46s} {total * 1e3:8.1f}")

    if use_torch:
        import torch  # lazy: optional baseline

        from benchmarks.torch_audio_llm import TorchAudioLLM, TorchTrainer, torch_batch

        fresh = program.init()  # the same initial weights as the JAX run
        model = TorchAudioLLM(mc, jax.device_get(fresh.params))
        max_pos = min(int(config.train.max_audio_positions) or program.seq_len, program.seq_len)
        trainer = TorchTrainer(model, config.train, program.schedule, max_pos)
        tb = [torch_batch(hb) for hb in host_batches]
        torch_losses = [trainer.step(bt) for bt in tb[:2]]
        tokens = sum(program.task.tokens(hb) for hb in host_batches[2:])
        t0 = time.perf_counter()
        torch_losses += [trainer.step(bt) for bt in tb[2:]]
        tsec = (time.perf_counter() - t0) / known.steps
        ttok = tokens / known.steps / tsec
        tach = program.flops_per_step / tsec
        diff = max(abs(a - b_) for a, b_ in zip(jax_losses, torch_losses))
        print(f"\nPyTorch {torch.__version__} ({torch.get_num_threads()} threads): {tsec * 1e3:.1f} ms/step, "
              f"{ttok:,.0f} tokens/s, {tach / 1e9:.1f} GFLOP/s = {100 * tach / tpeak:.1f}% of the torch matmul peak")
        print(f"losses over {len(jax_losses)} steps: max |JAX - torch| = {diff:.2e} "
              f"(first {jax_losses[0]:.5f} vs {torch_losses[0]:.5f}, last {jax_losses[-1]:.5f} vs "
              f"{torch_losses[-1]:.5f})")
        print(f"JAX / torch tokens/s: {rows_out[0][1] / ttok:.2f}x")
        rows_out.append(("PyTorch train step", ttok, tach / tpeak))

    if known.profile:
        hlo = program.step.lower(state, batches[0]).compile().as_text()
        with jax.profiler.trace(known.profile, create_perfetto_trace=True):
            for bt in batches[:3]:
                state, metrics = program.step(state, bt)
            jax.block_until_ready(metrics)
        parts, total = breakdown(known.profile, hlo)
        print(f"\njax.profiler trace of 3 steps in {known.profile}: time of the step's HLO ops by component "
              f"(forward + backward; {total:.2f} s of op time)")
        for name, t in sorted(parts.items(), key=lambda kv: -kv[1]):
            print(f"  {name:60s} {t / 3 * 1e3:9.1f} ms/step {100 * t / total:6.1f}%")

    cmd = "python benchmarks/train_step.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    c = mc.llm
    print("\ndocs rows (what | tokens/s | fraction of the same-run matmul peak | command):")
    for name, tok_s, frac in rows_out:
        print(f"| {name}, {known.size} (H={c.hidden_size}, L={c.num_layers}), B={program.rows}×S={program.seq_len}, "
              f"{mc.dtype} | {tok_s:,.0f} | {100 * frac:.1f}% | `{cmd}` |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
