"""A PyTorch re-implementation of the audio LLM's training step: the same-run baseline of
``benchmarks/train_step.py``.

It follows the reference's op order (spec §3.1-3.2, §4.10-4.11): Qwen2-style decoder (RMSNorm in
float32, q/k/v with bias, NeoX RoPE, grouped-query attention through
``torch.nn.functional.scaled_dot_product_attention`` with a causal-within-segment mask, SwiGLU),
an untied LM head with weighted text cross entropy, audio input embeddings summed over the 8
codebooks, and the depth-transformer audio head (causal MHA over 8 depth positions,
position-specific FFNs, 8 classifiers) evaluated on the same gathered audio positions as the JAX
loss. The optimizer is AdamW with global-norm clipping and no decay on biases and norm scales,
the learning rate taken from the same schedule. Weights are copied from the JAX model, so the
losses of both sides can be compared step by step.

Used only by the benchmark; torch is an optional dependency.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

NUM_CODEBOOKS = 8


def _t(x) -> torch.Tensor:
    return torch.from_numpy(np.array(x, dtype=np.float32))


def rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps))


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rot * sin


class TorchAudioLLM(torch.nn.Module):
    """Parameters named like the JAX pure dict (``layers.attn.q_proj.kernel`` ...), stacked over layers."""

    def __init__(self, cfg, params: dict):
        super().__init__()
        self.cfg = cfg
        c = cfg.llm
        self.eps, self.head_eps = c.rms_norm_eps, cfg.audio_head.rms_norm_eps
        self.theta = c.rope_theta
        flat = {}

        def walk(prefix, tree):
            if isinstance(tree, dict):
                for k, v in tree.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
            elif isinstance(tree, (list, tuple)):
                for i, v in enumerate(tree):
                    walk(f"{prefix}.{i}", v)
            else:
                flat[prefix] = tree

        walk("", params)
        self.names = sorted(flat)
        self.p = torch.nn.ParameterDict({k.replace(".", "__"): torch.nn.Parameter(_t(v)) for k, v in flat.items()})

    def w(self, name: str) -> torch.Tensor:
        return self.p[name.replace(".", "__")]

    # ------------------------------------------------------------------ pieces

    def frame_embedding(self, codes: torch.Tensor) -> torch.Tensor:
        out = None
        for k in range(NUM_CODEBOOKS):
            ids = codes[..., k].clamp(0, self.cfg.codebook_sizes[k])
            e = F.embedding(ids, self.w(f"audio_embed.{k}.embedding"))
            out = e if out is None else out + e
        return out

    def decoder(self, ids, codes, positions, segment_ids) -> torch.Tensor:
        c = self.cfg.llm
        b, s = ids.shape
        x = F.embedding(ids.clamp(0, c.vocab_size - 1), self.w("embed_tokens.embedding"))
        is_audio = (ids == self.cfg.tokens.audio_pad_token_id)[..., None]
        x = torch.where(is_audio, self.frame_embedding(codes), x)
        causal = torch.ones(s, s, dtype=torch.bool).tril()
        mask = causal[None] & (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, None, :] != 0)
        mask = mask | torch.eye(s, dtype=torch.bool)[None]  # padding rows see themselves (no NaN); unweighted
        half = c.head_dim // 2
        inv = 1.0 / (self.theta ** (torch.arange(0, half, dtype=torch.float32) * 2.0 / c.head_dim))
        ang = positions.float()[..., None] * inv
        emb = torch.cat([ang, ang], -1)
        cos, sin = emb.cos()[:, None], emb.sin()[:, None]  # [B, 1, S, D]
        for i in range(c.num_layers):
            L = lambda n: self.w(f"layers.{n}")[i]  # noqa: E731
            n = rms(x, L("input_norm.scale"), self.eps)
            q = torch.einsum("bse,ehd->bhsd", n, L("attn.q_proj.kernel")) + L("attn.q_proj.bias")[:, None, :]
            k = torch.einsum("bse,ehd->bhsd", n, L("attn.k_proj.kernel")) + L("attn.k_proj.bias")[:, None, :]
            v = torch.einsum("bse,ehd->bhsd", n, L("attn.v_proj.kernel")) + L("attn.v_proj.bias")[:, None, :]
            q, k = rope(q, cos, sin), rope(k, cos, sin)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None], enable_gqa=True)
            x = x + torch.einsum("bhsd,hde->bse", a, L("attn.o_proj.kernel"))
            m = rms(x, L("post_attn_norm.scale"), self.eps)
            g = F.silu(m @ L("mlp.gate_proj.kernel")) * (m @ L("mlp.up_proj.kernel"))
            x = x + g @ L("mlp.down_proj.kernel")
        return rms(x, self.w("norm.scale"), self.eps)

    def audio_head(self, x: torch.Tensor, codes: torch.Tensor) -> list[torch.Tensor]:
        """x [N, H], codes [N, 8] -> 8 logits [N, C_k + 1]."""
        embs = [F.embedding(codes[:, k], self.w(f"audio_embed.{k}.embedding")) for k in range(NUM_CODEBOOKS - 1)]
        y = torch.cat([x[:, None], torch.stack(embs, 1).cumsum(1)], 1)  # [N, 8, H]
        d = y.shape[1]
        causal = torch.ones(d, d, dtype=torch.bool).tril()
        nl = self.w("audio_head.layers.norm1.scale").shape[0]
        for i in range(nl):
            L = lambda n: self.w(f"audio_head.layers.{n}")[i]  # noqa: E731
            n = rms(y, L("norm1.scale"), self.head_eps)
            q = torch.einsum("bse,ehd->bhsd", n, L("attn.q_proj.kernel")) + L("attn.q_proj.bias")[:, None, :]
            k = torch.einsum("bse,ehd->bhsd", n, L("attn.k_proj.kernel")) + L("attn.k_proj.bias")[:, None, :]
            v = torch.einsum("bse,ehd->bhsd", n, L("attn.v_proj.kernel")) + L("attn.v_proj.bias")[:, None, :]
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=causal)
            a = torch.einsum("bhsd,hde->bse", a, L("attn.out_proj.kernel")) + L("attn.out_proj.bias")
            r = rms(y + a, L("norm2.scale"), self.head_eps)
            h = F.gelu(torch.einsum("bld,ldt->blt", r, L("ffn.w1")))
            y = r + torch.einsum("blt,ltd->bld", h, L("ffn.w2"))
        y = rms(y, self.w("audio_head.headnorm.scale"), self.head_eps)
        return [y[:, k] @ self.w(f"audio_head.heads.{k}.kernel") + self.w(f"audio_head.heads.{k}.bias")
                for k in range(NUM_CODEBOOKS)]

    def loss(self, batch: dict, max_positions: int, audio_loss_weight: float = 1.0) -> torch.Tensor:
        ids, seg = batch["input_ids"], batch["segment_ids"]
        hidden = self.decoder(ids, batch["audio_codes"], batch["positions"], seg)
        tw, aw = batch["text_weights"], batch["audio_weights"]
        logits = hidden @ self.w("lm_head.kernel")
        text = (F.cross_entropy(logits.flatten(0, 1), batch["text_targets"].flatten(), reduction="none")
                * tw.flatten()).sum()
        # audio head on the first K positions of each row that carry audio weight (as the JAX loss)
        has = (aw > 0).any(-1)
        order = torch.argsort((~has).to(torch.int8), dim=1, stable=True)[:, :max_positions]
        valid = torch.gather(has, 1, order)
        take = lambda x: torch.gather(x, 1, order.reshape(*order.shape, *([1] * (x.ndim - 2))).expand(  # noqa: E731
            *order.shape, *x.shape[2:]))
        h, t, w = take(hidden), take(batch["audio_targets"]), take(aw) * valid[..., None]
        logits = self.audio_head(h.flatten(0, 1), t.flatten(0, 1))
        t, w = t.flatten(0, 1), w.flatten(0, 1)
        audio = sum((F.cross_entropy(lg, t[:, k], reduction="none") * w[:, k]).sum() for k, lg in enumerate(logits))
        return text / tw.sum().clamp(min=1.0) + audio_loss_weight * audio / aw.sum().clamp(min=1.0)


class TorchTrainer:
    """AdamW (no decay on biases and norm scales), global-norm clipping, lr from ``schedule``."""

    def __init__(self, model: TorchAudioLLM, train_cfg, schedule, max_positions: int):
        self.model, self.schedule, self.max_positions = model, schedule, max_positions
        self.clip = float(train_cfg.max_grad_norm)
        self.audio_loss_weight = float(train_cfg.audio_loss_weight)
        decay = [p for n, p in model.p.items() if n.rsplit("__", 1)[-1] not in ("bias", "scale")]
        no_decay = [p for n, p in model.p.items() if n.rsplit("__", 1)[-1] in ("bias", "scale")]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": float(train_cfg.weight_decay)},
                                      {"params": no_decay, "weight_decay": 0.0}],
                                     lr=0.0, betas=(float(train_cfg.b1), float(train_cfg.b2)), eps=float(train_cfg.eps))
        self.step_count = 0

    def step(self, batch: dict) -> float:
        lr = float(self.schedule(self.step_count))
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        loss = self.model.loss(batch, self.max_positions, self.audio_loss_weight)
        loss.backward()
        if self.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.opt.step()
        self.step_count += 1
        return float(loss.detach())


def torch_batch(batch: dict) -> dict:
    return {k: torch.from_numpy(np.asarray(v)).long() if np.asarray(v).dtype.kind in "iu"
            else torch.from_numpy(np.asarray(v, np.float32)) for k, v in batch.items()}
