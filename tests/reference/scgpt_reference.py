"""Torch-only reference for scGPT whole-human (docs: /work/shared/docs/models.md §3, §5, §7, §8).

Shared by make_scgpt_fixtures.py, crosscheck_scgpt.py and bench/python/forward_scgpt.py. Needs only torch,
safetensors and numpy (no scgpt, no flash-attn).

What is here:

- `ScGPTRef`: the encoder, ExprDecoder and MVCDecoder of scGPT's `TransformerModel`, with module names chosen so
  that a checkpoint in the torch layout loads with `strict=True`:
    encoder.embedding      Embedding(V, E, padding_idx=<pad>)
    encoder.enc_norm       LayerNorm(E, eps 1e-5)
    flag_encoder           Embedding(2, E)  (in the real checkpoint; unused at inference)
    value_encoder          linear1 Linear(1, E), linear2 Linear(E, E), norm LayerNorm(E)
    transformer_encoder    nn.TransformerEncoder(nn.TransformerEncoderLayer(E, nheads, d_hid, 0.2,
                           batch_first=True), nlayers, enable_nested_tensor=False)  (post-norm, ReLU)
    decoder.fc             Linear(E,E), LeakyReLU(0.01), Linear(E,E), LeakyReLU(0.01), Linear(E,1)
    mvc_decoder            gene2query Linear(E,E), W Linear(E,E,bias=False)
- `randomise_`: seeded random weights, every tensor random (incl. LayerNorm gamma/beta, all biases);
  `quantise_` / `sparsify_` for the compressed width-512 fixture;
- `run_reference`: forward with the §5 hooks on a right-padded batch of ragged cells;
- checkpoint writers in the flash layout (the real best_model.pt: `self_attn.Wqkv.*` + `flag_encoder.weight`)
  or the torch layout (`self_attn.in_proj_*`, no flag_encoder), as `best_model.pt` (torch.save) or
  `model.safetensors`; `args.json` / `vocab.json` writers; `load_model_dir` (reads any of the four back);
- `write_expected` / `write_input_json`: the fixture files the Rust tests read.

Hook points (§5), captured with forward hooks on the torch modules:
    hook_embed                 g + v (not a module output; the input of layer 0)
    blocks.L.hook_attn_out     transformer_encoder.layers[L].self_attn output [0]
    blocks.L.hook_resid_mid    ...layers[L].norm1 output
    blocks.L.hook_mlp_out      ...layers[L].linear2 output
    blocks.L.hook_resid_post   ...layers[L].norm2 output (= the layer output)
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

LN_EPS = 1e-5
MAX_VALUE = 512.0  # ContinuousValueEncoder clamps from above only: -2 (pad/CLS) and -1 (mask) pass unchanged
PAD_VALUE = -2.0
MASK_VALUE = -1.0
SPECIALS = ("<pad>", "<cls>", "<eoc>")  # the last three ids, in this order, as in the real vocab.json
HOOK_LEAVES = ("hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post")
# Weight-bound multipliers for the ExprDecoder (see randomise_).
DECODER_GAIN = {"decoder.fc.0": math.sqrt(6.0), "decoder.fc.2": math.sqrt(6.0), "decoder.fc.4": math.sqrt(3.0)}
REAL_DIR = Path("/work/shared/data/scgpt/whole-human")


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


class _Encoder(nn.Module):
    def __init__(self, V: int, E: int, pad_id: int):
        super().__init__()
        self.embedding = nn.Embedding(V, E, padding_idx=pad_id)
        self.enc_norm = nn.LayerNorm(E, eps=LN_EPS)

    def forward(self, src: torch.Tensor) -> torch.Tensor:
        return self.enc_norm(self.embedding(src))


class _ValueEncoder(nn.Module):
    def __init__(self, E: int):
        super().__init__()
        self.linear1 = nn.Linear(1, E)
        self.linear2 = nn.Linear(E, E)
        self.norm = nn.LayerNorm(E, eps=LN_EPS)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        x = torch.clamp(values, max=MAX_VALUE)[..., None]
        return self.norm(self.linear2(torch.relu(self.linear1(x))))


class _ExprDecoder(nn.Module):
    def __init__(self, E: int):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(E, E), nn.LeakyReLU(0.01), nn.Linear(E, E), nn.LeakyReLU(0.01),
                                nn.Linear(E, 1))


class _MVCDecoder(nn.Module):
    def __init__(self, E: int):
        super().__init__()
        self.gene2query = nn.Linear(E, E)
        self.W = nn.Linear(E, E, bias=False)


class ScGPTRef(nn.Module):
    """scGPT whole-human `TransformerModel` (inference parts). Always f32, always built in eval mode."""

    def __init__(self, V: int, E: int, nheads: int, d_hid: int, nlayers: int, pad_id: int):
        super().__init__()
        self.cfg = dict(V=V, E=E, nheads=nheads, d_hid=d_hid, nlayers=nlayers, pad_id=pad_id)
        self.encoder = _Encoder(V, E, pad_id)
        self.flag_encoder = nn.Embedding(2, E)
        self.value_encoder = _ValueEncoder(E)
        layer = nn.TransformerEncoderLayer(E, nheads, d_hid, 0.2, batch_first=True)
        # enable_nested_tensor=False: otherwise the encoder turns a padded batch into a NestedTensor
        # even with the MHA fast path off, and the per-module hooks see nested tensors (models.md §7).
        self.transformer_encoder = nn.TransformerEncoder(layer, nlayers, enable_nested_tensor=False)
        self.decoder = _ExprDecoder(E)
        self.mvc_decoder = _MVCDecoder(E)
        self.eval()

    def embed(self, src: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(g, h0): gene-encoder output and the input of layer 0 (= hook_embed)."""
        g = self.encoder(src)
        return g, g + self.value_encoder(values)

    def encode(self, src: torch.Tensor, values: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Last layer's output (no heads); pad_mask True = pad (None: no padding)."""
        _, h0 = self.embed(src, values)
        return self.transformer_encoder(h0, src_key_padding_mask=pad_mask)

    def heads(self, g: torch.Tensor, h: torch.Tensor) -> dict[str, torch.Tensor]:
        cell = h[:, 0]  # "cls" style; raw here (embed_data L2-normalises it, the MVC head does not)
        expr = self.decoder.fc(h)[..., 0]
        q = torch.sigmoid(self.mvc_decoder.gene2query(g))  # from the gene encoder output, not from h
        mvc = torch.bmm(self.mvc_decoder.W(q), cell[..., None])[..., 0]
        return {"cell_embedding": cell, "expr_pred": expr, "mvc_pred": mvc}


def hook_names(nlayers: int) -> list[str]:
    names = ["hook_embed"]
    for L in range(nlayers):
        names += [f"blocks.{L}.{leaf}" for leaf in HOOK_LEAVES]
    return names


# --------------------------------------------------------------------------------------------
# Random weights
# --------------------------------------------------------------------------------------------


def _uniform(gen: torch.Generator, shape, bound: float) -> torch.Tensor:
    return (torch.rand(shape, generator=gen, dtype=torch.float64) * 2.0 - 1.0).mul_(bound).float()


@torch.no_grad()
def randomise_(model: ScGPTRef, seed: int, qk_gain: float = 1.4) -> None:
    """Seeded random weights; no tensor keeps a default (0, 1 or a copy of another layer's).

    - LayerNorm gamma 1 + 0.1·N(0,1), beta 0.1·N(0,1): a missing gamma/beta or a wrong eps shows;
    - Linear weight and bias U(±1/√in) (torch's default bound), except
      * the Q and K rows of in_proj_weight: U(±qk_gain·√3/√E), std qk_gain/√E, so that attention scores
        have std ~2 and the softmax is far from uniform (with the default bound the attention is almost
        uniform and a wrong head split or swapped q/k would hardly change anything);
      * decoder.fc.{0,2,4} weights: bound ×√6, ×√6, ×√3 (He-style for the LeakyReLUs), so that expr_pred
        has std ~1; with the default bound it shrinks ~3× per layer (std ~0.04) and the tests' 1e-4
        absolute tolerance would be loose next to it;
      * value_encoder.linear1 ([E, 1]): weight w U(±1), bias -w·t, i.e. unit j is relu(w_j·(x - t_j)) with
        its kink t_j in -3..55 for 60 % of the units (any sign of w) and in 55..1000 for the rest (w > 0,
        so they are 0 below t_j and do not swamp small values). The ReLU pattern then changes across
        the binned range (incl. -2, -1) and also between 512 and 900, so that a missing (or lower-bound)
        clamp changes hook_embed;
    - embeddings (genes, flag) U(±0.1), including the pad row (as the real init, which redraws it).
    """
    gen = torch.Generator().manual_seed(seed)
    E = model.cfg["E"]
    for mname, m in model.named_modules():
        if isinstance(m, nn.LayerNorm):
            m.weight.copy_(1.0 + 0.1 * torch.randn(m.weight.shape, generator=gen))
            m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
        elif isinstance(m, nn.Embedding):
            m.weight.copy_(_uniform(gen, m.weight.shape, 0.1))
        elif isinstance(m, nn.MultiheadAttention):
            b = 1.0 / math.sqrt(E)
            m.in_proj_weight[: 2 * E].copy_(_uniform(gen, (2 * E, E), qk_gain * math.sqrt(3.0) * b))
            m.in_proj_weight[2 * E:].copy_(_uniform(gen, (E, E), b))
            m.in_proj_bias.copy_(_uniform(gen, (3 * E,), b))
            # out_proj is an nn.Linear submodule: handled below
        elif mname == "value_encoder.linear1":
            w = _uniform(gen, (E,), 1.0)
            u = torch.rand(E, generator=gen, dtype=torch.float64)
            low = torch.rand(E, generator=gen, dtype=torch.float64) < 0.6
            t = torch.where(low, -3.0 + 58.0 * u, 55.0 + 945.0 * u).float()
            w = torch.where(low, w, w.abs())  # high kinks switch ON above t: no big constant for small values
            m.weight.copy_(w[:, None])
            m.bias.copy_(-w * t)
        elif isinstance(m, nn.Linear):
            b = 1.0 / math.sqrt(m.in_features)
            gain = DECODER_GAIN.get(mname, 1.0)
            m.weight.copy_(_uniform(gen, m.weight.shape, gain * b))
            if m.bias is not None:
                m.bias.copy_(_uniform(gen, m.bias.shape, b))


@torch.no_grad()
def sparsify_(model: ScGPTRef, density: float, seed: int) -> int:
    """Keep a random `density` fraction of every matrix with ≥ 64 inputs (Linear weights, in_proj_weight) and
    scale the kept entries by 1/√density (same std). Used only for the width-512 fixture, to make the gzipped
    checkpoint small: deflate gets ~1 byte per dense 2^-9-quantised weight, ~0.28 at density 0.1. Each output
    still sums ~0.1·in random terms, so indexing/transposition bugs still show. Returns #entries kept."""
    if density >= 1.0:
        return sum(p.numel() for p in model.parameters())
    gen = torch.Generator().manual_seed(seed)
    kept = 0
    for name, p in model.named_parameters():
        if p.dim() == 2 and p.shape[1] >= 64 and not name.startswith(("encoder.embedding", "flag_encoder")):
            keep = torch.rand(p.shape, generator=gen) < density
            p.copy_(torch.where(keep, p / math.sqrt(density), torch.zeros(())))
            kept += int(keep.sum())
    return kept


@torch.no_grad()
def quantise_(model: ScGPTRef, step: float = 2.0**-9) -> float:
    """Round every parameter to a multiple of `step` (still f32, exact: the values are small multiples of a
    power of two). The reference is computed with the rounded values. Returns the largest change."""
    worst = 0.0
    for p in model.parameters():
        q = torch.round(p / step) * step
        worst = max(worst, float((q - p).abs().max()))
        p.copy_(q)
    return worst


# --------------------------------------------------------------------------------------------
# Inputs and the hooked forward
# --------------------------------------------------------------------------------------------


def pad_cells(gene_ids: list[list[int]], values: list[list[float]], pad_id: int):
    """Right-pad with pad_id / -2. Returns ids I64 [B, Lmax], values F32 [B, Lmax], pad mask (True = pad),
    lengths I64 [B]."""
    assert len(gene_ids) == len(values) and all(len(a) == len(b) for a, b in zip(gene_ids, values))
    lengths = torch.tensor([len(c) for c in gene_ids], dtype=torch.int64)
    B, Lmax = len(gene_ids), int(lengths.max())
    ids = torch.full((B, Lmax), pad_id, dtype=torch.int64)
    vals = torch.full((B, Lmax), PAD_VALUE, dtype=torch.float32)
    for b, (c, v) in enumerate(zip(gene_ids, values)):
        ids[b, : len(c)] = torch.tensor(c, dtype=torch.int64)
        vals[b, : len(v)] = torch.tensor(v, dtype=torch.float32)
    pad = torch.arange(Lmax)[None, :] >= lengths[:, None]
    return ids, vals, pad, lengths


def zero_pads(x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    """Pad positions set to +0.0 (torch.where, not a multiply: no -0.0, no NaN propagation)."""
    keep = ~pad if x.dim() == pad.dim() else ~pad[..., None]
    return torch.where(keep, x, torch.zeros((), dtype=x.dtype)).contiguous()


@torch.no_grad()
def run_reference(model: ScGPTRef, ids: torch.Tensor, vals: torch.Tensor, pad: torch.Tensor) -> dict:
    """Hooked forward on a padded batch (pad positions NOT zeroed). Returns every hook [B, Lmax, E] plus
    cell_embedding [B, E], expr_pred [B, Lmax], mvc_pred [B, Lmax], and `layer_inputs` (for diagnostics).

    Runs with the MHA fast path disabled (restored afterwards): on the fast path torch converts the padded
    batch to a nested tensor, submodule hooks do not fire and the fused kernel differs by ~1e-6."""
    assert not model.training
    N = model.cfg["nlayers"]
    cap: dict[str, torch.Tensor] = {}
    layer_in: list[torch.Tensor] = []
    layer_out: list[torch.Tensor] = []
    handles = []

    def saver(name, pick=lambda o: o):
        def fn(_m, _i, out):
            t = pick(out)
            assert isinstance(t, torch.Tensor) and not t.is_nested, name
            cap[name] = t.detach().clone()
        return fn

    for L, layer in enumerate(model.transformer_encoder.layers):
        handles += [
            layer.self_attn.register_forward_hook(saver(f"blocks.{L}.hook_attn_out", lambda o: o[0])),
            layer.norm1.register_forward_hook(saver(f"blocks.{L}.hook_resid_mid")),
            layer.linear2.register_forward_hook(saver(f"blocks.{L}.hook_mlp_out")),
            layer.norm2.register_forward_hook(saver(f"blocks.{L}.hook_resid_post")),
            layer.register_forward_pre_hook(lambda _m, args, kwargs: layer_in.append(args[0] if args else kwargs["src"]),
                                            with_kwargs=True),
            layer.register_forward_hook(lambda _m, _i, out: layer_out.append(out)),
        ]
    was = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        g, h0 = model.embed(ids, vals)
        h = model.transformer_encoder(h0, src_key_padding_mask=pad)
        out = model.heads(g, h)
    finally:
        torch.backends.mha.set_fastpath_enabled(was)
        for hd in handles:
            hd.remove()

    assert len(layer_in) == len(layer_out) == N, (len(layer_in), len(layer_out))
    cap["hook_embed"] = h0.clone()
    # The hooks must be the states that really flow between the layers, bit for bit.
    assert torch.equal(layer_in[0], h0), "layer 0 input != hook_embed"
    for L in range(N):
        assert torch.equal(cap[f"blocks.{L}.hook_resid_post"], layer_out[L]), f"resid_post {L} != layer {L} output"
        if L + 1 < N:
            assert torch.equal(layer_in[L + 1], cap[f"blocks.{L}.hook_resid_post"]), f"layer {L + 1} input != resid_post {L}"
    assert torch.equal(h, cap[f"blocks.{N - 1}.hook_resid_post"]), "encoder output != last resid_post"
    res = {name: cap[name] for name in hook_names(N)}
    res.update(out)
    res["layer_inputs"] = layer_in
    return res


@torch.no_grad()
def attention_peakedness(model: ScGPTRef, layer_inputs: list[torch.Tensor], pad: torch.Tensor) -> float:
    """Mean over layers, heads and real query rows of the largest attention probability (recomputed from
    each layer's input with in_proj; pad keys masked)."""
    E, H = model.cfg["E"], model.cfg["nheads"]
    d = E // H
    real = ~pad
    vals = []
    for layer, x in zip(model.transformer_encoder.layers, layer_inputs):
        a = layer.self_attn
        qkv = x @ a.in_proj_weight.T + a.in_proj_bias
        B, Lq, _ = x.shape
        q, k = (qkv[..., i * E:(i + 1) * E].reshape(B, Lq, H, d).transpose(1, 2) for i in (0, 1))
        s = (q @ k.transpose(-1, -2)) / math.sqrt(d)
        s = s.masked_fill(pad[:, None, None, :], float("-inf"))
        p = torch.softmax(s, -1).amax(-1).transpose(1, 2)  # [B, L, H]
        vals.append(p[real].mean())
    return float(torch.stack(vals).mean())


def health(name: str, model: ScGPTRef, ref: dict, pad: torch.Tensor, min_std: float = 0.05) -> dict:
    """Print and assert that the reference is not degenerate: attention far from uniform, every hook and
    head output O(1)-ish."""
    real = ~pad
    peak = attention_peakedness(model, ref["layer_inputs"], pad)
    uniform = float((1.0 / real.sum(1).double()).mean())  # mean over cells of 1/len
    stds = {k: float(ref[k][real].std()) for k in hook_names(model.cfg["nlayers"]) if k in ref}
    stds.update({k: float(ref[k][real].std()) for k in ("expr_pred", "mvc_pred")})
    lo, hi = min(stds, key=stds.get), max(stds, key=stds.get)
    print(f"  {name}: mean attention row max {peak:.3f} (uniform {uniform:.3f}); std {stds[lo]:.3f} ({lo}) .. "
          f"{stds[hi]:.3f} ({hi}); expr_pred std {stds['expr_pred']:.3f}, mvc_pred std {stds['mvc_pred']:.3f}")
    assert peak > max(0.1, 3 * uniform), f"{name}: attention is nearly uniform"
    assert all(min_std < s < 50 for s in stds.values()), f"{name}: scale out of range {stds}"
    return {"attention_peak": peak, "uniform": uniform, "std": stds}


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def state_dict_in_layout(model: ScGPTRef, layout: str) -> dict[str, torch.Tensor]:
    """The state dict as a checkpoint would hold it (fresh contiguous f32 tensors, no shared storage).

    flash: `self_attn.in_proj_{weight,bias}` -> `self_attn.Wqkv.{weight,bias}` (same [3E, E] layout: rows
           Q, K, V, each split by head), `flag_encoder.weight` kept: the key set of the real best_model.pt;
    torch: torch's own names (`in_proj_*`), no `flag_encoder.weight`."""
    assert layout in ("flash", "torch"), layout
    out = {}
    for k, v in model.state_dict().items():
        if layout == "torch" and k == "flag_encoder.weight":
            continue
        if layout == "flash":
            k = k.replace("self_attn.in_proj_weight", "self_attn.Wqkv.weight").replace(
                "self_attn.in_proj_bias", "self_attn.Wqkv.bias")
        assert v.dtype == torch.float32, k
        out[k] = v.detach().clone().contiguous()
    return out


def save_checkpoint(model: ScGPTRef, d: Path, layout: str, fmt: str) -> Path:
    """Write best_model.pt (fmt "pt": torch.save of a plain state dict, like the real file) or
    model.safetensors (fmt "safetensors") in the given layout; returns the path."""
    sd = state_dict_in_layout(model, layout)
    d.mkdir(parents=True, exist_ok=True)
    if fmt == "pt":
        path = d / "best_model.pt"
        torch.save(sd, path)  # the zip's top folder is the file stem ("best_model/"): same bytes on reruns
    elif fmt == "safetensors":
        path = d / "model.safetensors"
        save_file(sd, path)
    else:
        raise ValueError(fmt)
    return path


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    if path.name.endswith(".safetensors"):
        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def to_torch_layout(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The renames scGPT's load_pretrained applies without flash-attn (models.md §3.4); drops flag_encoder
    and cls_decoder.*"""
    out = {}
    for k, v in sd.items():
        if k.startswith("cls_decoder.") or k == "flag_encoder.weight":
            continue
        k = k.replace("self_attn._impl.Wqkv.", "self_attn.in_proj_").replace("self_attn.Wqkv.", "self_attn.in_proj_")
        k = k.replace("self_attn._impl.out_proj.", "self_attn.out_proj.")
        out[k] = v
    return out


def real_args(path: Path = REAL_DIR / "args.json") -> dict:
    with open(path) as f:
        return json.load(f)


def write_args_json(d: Path, E: int, nlayers: int, nheads: int, d_hid: int, base: Path = REAL_DIR / "args.json") -> dict:
    """The real args.json (key order kept) with the four size keys overridden."""
    args = real_args(base)
    args.update(embsize=E, nlayers=nlayers, nheads=nheads, d_hid=d_hid)
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "args.json", "w") as f:
        json.dump(args, f, indent=2)
        f.write("\n")
    return args


def make_vocab(symbols: list[str]) -> dict[str, int]:
    """{symbol: id}: genes 0..n-1 in the given order, then <pad>, <cls>, <eoc> (as in the real vocab)."""
    vocab = {s: i for i, s in enumerate(symbols)}
    assert len(vocab) == len(symbols), "duplicate symbols"
    for s in SPECIALS:
        vocab[s] = len(vocab)
    return vocab


def write_vocab_json(d: Path, vocab: dict[str, int], seed: int) -> None:
    """Write vocab.json with the entries in a seeded shuffled order: the real file is not ordered by id
    either, so a reader must not rely on the order."""
    items = list(vocab.items())
    order = np.random.default_rng(seed).permutation(len(items))
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "vocab.json", "w") as f:
        json.dump({items[i][0]: items[i][1] for i in order}, f)
        f.write("\n")


def copy_real_vocab(d: Path, src: Path = REAL_DIR / "vocab.json") -> dict[str, int]:
    d.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, d / "vocab.json")
    with open(src) as f:
        return json.load(f)


def special_ids(vocab: dict[str, int]) -> tuple[int, int, int]:
    pad, cls, eoc = (vocab[s] for s in SPECIALS)
    assert (pad, cls, eoc) == (len(vocab) - 3, len(vocab) - 2, len(vocab) - 1), (pad, cls, eoc, len(vocab))
    return pad, cls, eoc


@torch.no_grad()
def load_model_dir(d: Path) -> ScGPTRef:
    """Build ScGPTRef from a model folder: args.json, vocab.json and best_model.pt or model.safetensors, in
    either layout. Strict on every key except flag_encoder.weight (absent in the torch layout)."""
    args = real_args(d / "args.json")
    with open(d / "vocab.json") as f:
        vocab = json.load(f)
    pad, _, _ = special_ids(vocab)
    path = d / "best_model.pt" if (d / "best_model.pt").exists() else d / "model.safetensors"
    raw = read_checkpoint(path)
    sd = to_torch_layout(raw)
    model = ScGPTRef(len(vocab), args["embsize"], args["nheads"], args["d_hid"], args["nlayers"], pad)
    want = set(model.state_dict()) - {"flag_encoder.weight"}
    missing, unexpected = want - set(sd), set(sd) - want
    assert not missing and not unexpected, (sorted(missing)[:5], sorted(unexpected)[:5])
    model.flag_encoder.weight.zero_()  # unused by the forward; kept when the file has it
    if "flag_encoder.weight" in raw:
        sd["flag_encoder.weight"] = raw["flag_encoder.weight"]
    model.load_state_dict(sd, strict=False)
    return model.eval()


def random_cells(rng: np.random.Generator, n_genes: int, cls_id: int, lengths: list[int]) -> tuple[list, list]:
    """Cells [<cls>, genes...]: genes distinct, drawn from the non-special ids 0..n_genes-1; values CLS -2,
    genes binned 1..50 (as floats)."""
    ids, vals = [], []
    for L in lengths:
        assert 2 <= L <= n_genes + 1, (L, n_genes)
        genes = rng.choice(n_genes, size=L - 1, replace=False)
        bins = rng.integers(1, 51, size=L - 1)
        ids.append([cls_id] + [int(x) for x in genes])
        vals.append([PAD_VALUE] + [float(x) for x in bins])
    return ids, vals


def write_input_json(path: Path, gene_ids: list[list[int]], values: list[list[float]]) -> None:
    """{"gene_ids": [[...]], "values": [[...]]}, ragged (unpadded); values as JSON numbers (e.g. 12.0, -2.0)."""
    assert all(isinstance(v, float) for row in values for v in row)
    with open(path, "w") as f:
        json.dump({"gene_ids": gene_ids, "values": values}, f)
        f.write("\n")


def expected_tensors(ref: dict, ids, vals, pad, lengths, names: list[str]) -> dict[str, torch.Tensor]:
    """The expected.safetensors content: inputs + the named hooks/heads with pad positions +0.0."""
    assert bool((vals[pad] == PAD_VALUE).all())  # values as fed to the model: pad positions hold -2
    t = {"gene_ids": ids.contiguous(), "values": vals.contiguous(), "lengths": lengths.contiguous()}
    for n in names:
        t[n] = zero_pads(ref[n], pad) if n != "cell_embedding" else ref[n].contiguous()
        assert t[n].dtype == torch.float32, n
    return t


def safetensors_metadata(generator: str, seed: int, desc: str) -> dict:
    """A single metadata key: the safetensors writer keeps metadata in a hash map, so with several keys
    their order in the header (and the file bytes) would change from run to run."""
    info = {"generator": generator, "torch": torch.__version__, "seed": seed, "description": desc}
    return {"info": json.dumps(info, sort_keys=True)}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a−b| / max(1, max|b|), in float64 (0 for empty tensors)."""
    if b.numel() == 0:
        return 0.0
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / max(1.0, float(b.abs().max())))


@torch.no_grad()
def manual_forward(model: ScGPTRef, ids: torch.Tensor, vals: torch.Tensor, pad: torch.Tensor) -> dict:
    """The same forward written out with plain tensor ops from the state dict (no nn.TransformerEncoder),
    following models.md §3.3. Used to check that the module-based reference and its hook points mean what
    §5 says (e.g. that norm1's output is the normalised x + attn_out). Pad rows are computed but meaningless."""
    cfg = model.cfg
    E, H, N = cfg["E"], cfg["nheads"], cfg["nlayers"]
    d = E // H
    sd = model.state_dict()

    def ln(x, prefix):
        return torch.nn.functional.layer_norm(x, (E,), sd[prefix + ".weight"], sd[prefix + ".bias"], LN_EPS)

    def lin(x, prefix, bias=True):
        y = x @ sd[prefix + ".weight"].T
        return y + sd[prefix + ".bias"] if bias else y

    out = {}
    g = ln(sd["encoder.embedding.weight"][ids], "encoder.enc_norm")
    x1 = torch.clamp(vals, max=MAX_VALUE)[..., None] * sd["value_encoder.linear1.weight"][:, 0] + sd["value_encoder.linear1.bias"]
    v = ln(lin(torch.relu(x1), "value_encoder.linear2"), "value_encoder.norm")
    x = g + v
    out["hook_embed"] = x
    B, Lq, _ = x.shape
    for L in range(N):
        p = f"transformer_encoder.layers.{L}"
        qkv = x @ sd[p + ".self_attn.in_proj_weight"].T + sd[p + ".self_attn.in_proj_bias"]
        q, k, vv = (qkv[..., i * E:(i + 1) * E].reshape(B, Lq, H, d).transpose(1, 2) for i in range(3))
        s = (q @ k.transpose(-1, -2)) / math.sqrt(d)
        s = s.masked_fill(pad[:, None, None, :], float("-inf"))
        ctx = (torch.softmax(s, -1) @ vv).transpose(1, 2).reshape(B, Lq, E)
        a = lin(ctx, p + ".self_attn.out_proj")
        u = ln(x + a, p + ".norm1")
        f = lin(torch.relu(lin(u, p + ".linear1")), p + ".linear2")
        x = ln(u + f, p + ".norm2")
        out.update({f"blocks.{L}.hook_attn_out": a, f"blocks.{L}.hook_resid_mid": u,
                    f"blocks.{L}.hook_mlp_out": f, f"blocks.{L}.hook_resid_post": x})
    leaky = torch.nn.functional.leaky_relu
    out["expr_pred"] = lin(leaky(lin(leaky(lin(x, "decoder.fc.0"), 0.01), "decoder.fc.2"), 0.01), "decoder.fc.4")[..., 0]
    cell = x[:, 0]
    qv = torch.sigmoid(lin(g, "mvc_decoder.gene2query"))
    out["mvc_pred"] = (lin(qv, "mvc_decoder.W", bias=False) * cell[:, None, :]).sum(-1)
    out["cell_embedding"] = cell
    return out


def check_against_manual(model: ScGPTRef, ref: dict, ids, vals, pad, tol: float = 1e-5) -> float:
    """Assert the module reference equals manual_forward at real positions (max rel err ≤ tol)."""
    man = manual_forward(model, ids, vals, pad)
    real = ~pad
    worst = 0.0
    for k, m in man.items():
        r = ref[k]
        e = rel_err(m, r) if k == "cell_embedding" else rel_err(m[real], r[real])
        assert e <= tol, f"manual forward disagrees on {k}: {e:.2e}"
        worst = max(worst, e)
    return worst
