#!/usr/bin/env python3
"""Generate the Geneformer parity fixtures under tests/fixtures/geneformer/.

The reference is Hugging Face `BertForMaskedLM` (eager attention, f32, eval mode) with random,
seeded weights. Three fixture folders are written:

  tiny_v2/       V2-shaped config at reduced width (H=128, 2 heads, 4 layers, I=256, V=96, P=64).
                 config.json, model.safetensors (save_pretrained), pytorch_model.bin
                 (torch.save(state_dict) + a `bert.embeddings.position_ids` buffer),
                 tokens.json, expected.safetensors (all hooks + logits) and edits.json; for each
                 ablation edit, expected.safetensors also holds the last layer's resid_post and the
                 logits after the edit. These are the real-format weight-file reader fixtures.
                 The weights are stored in float16 (half the size). The parameters are first
                 rounded to f16-representable values and the reference is computed in f32 with
                 those values, so f16 -> f32 on load is exact and the reference stays exact.
  ragged_v1/     V1-shaped config (H=192, 3 heads, 3 layers, I=384, V=80, P=48), 4 ragged cells
                 without special tokens. Weights NOT stored: formula weights (below).
                 config.json, weights.json, weights_check.safetensors, tokens.json,
                 expected.safetensors (all hooks + logits).
  v1_10m_full/   The real Geneformer-V1-10M config at full size. Weights NOT stored: formula
                 weights. config.json, weights.json, weights_check.safetensors, tokens.json,
                 expected.safetensors (hidden states + a few logits rows).

Formula weights: every tensor comes from splitmix64 (see FORMULA_RULE / `formula_values`), with a
per-tensor (center, scale) that is written to weights.json as "centers" / "scales". A reader
needs only weights.json (seed, names, shapes, centers, scales) and no rules on tensor names;
`model_from_spec` rebuilds the model that way and the script checks it matches bit for bit.

Hook names follow docs/models.md section 5:
  hook_embed                 <- output of bert.embeddings
  blocks.L.hook_attn_out     <- output of bert.encoder.layer[L].attention.output.dense
  blocks.L.hook_resid_mid    <- output of bert.encoder.layer[L].attention.output.LayerNorm
  blocks.L.hook_mlp_out      <- output of bert.encoder.layer[L].output.dense
  blocks.L.hook_resid_post   <- output of bert.encoder.layer[L].output.LayerNorm

Every hook tensor in expected.safetensors is f32 [B, Lmax, H] with pad positions set to +0.0;
`logits` is f32 [B, Lmax, V] with zeros at pad positions.

Run from the repository root (deterministic; re-running reproduces the same bytes for a given
torch / transformers version):

    /tmp/pyenv/venv/bin/python tests/reference/make_geneformer_fixtures.py

Options: --out DIR (default tests/fixtures/geneformer), --configs-dir DIR (default
../shared/data/geneformer/configs relative to the repository root).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import BertConfig, BertForMaskedLM

REPO = Path(__file__).resolve().parents[2]

# Keys that the formula-weight rule (ragged_v1, v1_10m_full) skips: the tied decoder and the position-id buffer.
FORMULA_SKIP = {
    "cls.predictions.decoder.weight",
    "cls.predictions.decoder.bias",
    "bert.embeddings.position_ids",
}
# Formula seeds. Only the low 16 bits of a seed reach the key (seed << 48 mod 2^64), so they must differ there.
V1_FULL_FORMULA_SEED = 20261121
RAGGED_FORMULA_SEED = 20261122
assert (V1_FULL_FORMULA_SEED ^ RAGGED_FORMULA_SEED) & 0xFFFF
MASK64 = (1 << 64) - 1


# --------------------------------------------------------------------------------------------
# Model construction
# --------------------------------------------------------------------------------------------


def load_real_config(configs_dir: Path, name: str, overrides: dict | None = None) -> dict:
    """Read a published config.json and apply size overrides (everything else is kept)."""
    with open(configs_dir / name / "config.json") as f:
        cfg = json.load(f)
    cfg.update(overrides or {})
    return cfg


def build_model(cfg_dict: dict, seed: int) -> BertForMaskedLM:
    """BertForMaskedLM with HF's default random init, seeded; eager attention, f32, eval mode."""
    cfg = BertConfig(**cfg_dict)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = BertForMaskedLM(cfg).to(torch.float32).eval()
    assert model.config._attn_implementation == "eager"
    return model


@torch.no_grad()
def randomise_params(model: BertForMaskedLM, seed: int) -> None:
    """Make the HF default init less degenerate, so that parity tests can see more bugs.

    - LayerNorm weights 1 + 0.1·N(0,1) and biases 0.1·N(0,1) (HF init is exactly 1 / 0);
    - every other bias 0.02·N(0,1) (HF init is 0), including cls.predictions.bias;
    - query/key weights N(0, (1.4/sqrt(H))^2), so that attention scores have std ~2 and the
      softmax is far from uniform (with std 0.02 the attention is ~uniform and a wrong head split
      or a transposed q/k would go unnoticed).
    """
    g = torch.Generator().manual_seed(seed)
    H = model.config.hidden_size
    for name, p in model.named_parameters():
        if name.endswith("LayerNorm.weight"):
            p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
        elif name.endswith("LayerNorm.bias"):
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
        elif name.endswith(".bias"):
            p.copy_(0.02 * torch.randn(p.shape, generator=g))
        elif name.endswith(("self.query.weight", "self.key.weight")):
            p.copy_((1.4 / math.sqrt(H)) * torch.randn(p.shape, generator=g))


def write_config(path: Path, cfg_dict: dict) -> None:
    """Write config.json in the published (real-file) layout rather than transformers 5's."""
    with open(path / "config.json", "w") as f:
        json.dump(cfg_dict, f, indent=2, sort_keys=True)
        f.write("\n")


@torch.no_grad()
def round_params_to_f16(model: BertForMaskedLM) -> dict:
    """Round every parameter to the nearest f16 value (kept in f32: p = p.half().float()).

    Afterwards a f16 copy of the model holds exactly the same values, so weight files saved in f16
    are exact for a reference computed in f32. Asserts that nothing overflows (|x| > 65504 -> inf);
    returns counts of values that land in the f16 subnormal range (|x| < 2^-14) or flush to 0.
    """
    stats = {"values": 0, "f16_subnormal": 0, "flushed_to_zero": 0, "max_abs_flushed": 0.0,
             "max_abs": 0.0, "max_abs_rounding_error": 0.0, "subnormal_by_tensor": {}}
    tiny = torch.finfo(torch.float16).tiny  # 2^-14, the smallest normal f16
    for name, p in model.named_parameters():  # tied parameters are visited once
        assert p.dtype == torch.float32, name
        r = p.half().float()
        assert torch.isfinite(r).all(), f"{name}: f16 overflow"
        flushed = (r == 0) & (p != 0)
        sub = (r != 0) & (r.abs() < tiny)
        stats["values"] += p.numel()
        stats["f16_subnormal"] += int(sub.sum())
        stats["flushed_to_zero"] += int(flushed.sum())
        if flushed.any():
            stats["max_abs_flushed"] = max(stats["max_abs_flushed"], float(p[flushed].abs().max()))
        if sub.any():
            stats["subnormal_by_tensor"][name] = int(sub.sum())
        stats["max_abs"] = max(stats["max_abs"], float(p.abs().max()))
        stats["max_abs_rounding_error"] = max(stats["max_abs_rounding_error"], float((r - p).abs().max()))
        p.copy_(r)
    # A value flushed to 0 was below half the smallest f16 subnormal (2^-25 ~ 3e-8): far below any
    # weight that matters next to weights of size ~0.02 (and the reference uses the 0).
    assert stats["max_abs_flushed"] <= 2.0**-25, stats
    # The tied decoder follows (it is the same parameter).
    assert model.cls.predictions.decoder.weight.data_ptr() == model.bert.embeddings.word_embeddings.weight.data_ptr()
    assert torch.equal(model.cls.predictions.decoder.bias, model.cls.predictions.bias)
    return stats


def f16_copy(model: BertForMaskedLM) -> BertForMaskedLM:
    """A float16 copy of a model whose parameters are already f16-representable (ties preserved)."""
    m16 = copy.deepcopy(model).half()
    assert m16.cls.predictions.decoder.weight.data_ptr() == m16.bert.embeddings.word_embeddings.weight.data_ptr()
    for name, p in m16.state_dict().items():
        if p.is_floating_point():
            assert p.dtype == torch.float16, name
    return m16


def safetensors_header(path: Path) -> dict:
    """The JSON header of a .safetensors file (8-byte little-endian length, then JSON)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(n))


def check_f16_file(loaded: dict, ref_sd: dict, what: str, skip: set) -> None:
    """Every tensor of `ref_sd` except `skip` is in `loaded` as F16 and casts to f32 exactly."""
    assert set(loaded) - {"bert.embeddings.position_ids"} == set(ref_sd) - skip, (what, sorted(set(loaded) ^ set(ref_sd)))
    for name in set(ref_sd) - skip:
        t = loaded[name]
        assert t.dtype == torch.float16, (what, name, t.dtype)
        assert torch.equal(t.float(), ref_sd[name]), f"{what}: {name} does not reload exactly"


def save_safetensors_model(model16: BertForMaskedLM, ref_sd: dict, cfg_dict: dict, out: Path) -> None:
    """save_pretrained of the f16 model (safetensors, tied decoder omitted), then restore the
    published config layout (config.json is the same as for an f32 save). Checks the header dtypes
    are F16 and that every tensor casts back to the f32 reference values exactly."""
    model16.save_pretrained(out, safe_serialization=True)
    write_config(out, cfg_dict)
    path = out / "model.safetensors"
    header = safetensors_header(path)
    dtypes = {v["dtype"] for k, v in header.items() if k != "__metadata__"}
    assert dtypes == {"F16"}, dtypes
    with safe_open(path, "pt") as f:
        loaded = {k: f.get_tensor(k) for k in f.keys()}
    assert "cls.predictions.decoder.weight" not in loaded and "cls.predictions.decoder.bias" not in loaded
    check_f16_file(loaded, ref_sd, "model.safetensors",
                   skip={"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"})


def save_bin_model(model: BertForMaskedLM, path: Path, ref_sd: dict) -> dict:
    """torch.save(state_dict) like old checkpoints; returns facts about what was written.

    `model` is the f16 copy; `ref_sd` the f32 state dict the reference was computed with: every
    float tensor of the file must be F16 and cast to exactly the reference values.

    transformers 5 no longer keeps `bert.embeddings.position_ids` in the state dict (it is a
    non-persistent buffer); real V1 .bin files have it, so it is added back here as int64 [1, P].
    """
    sd = model.state_dict()
    facts = {"position_ids_in_state_dict": "bert.embeddings.position_ids" in sd}
    if not facts["position_ids_in_state_dict"]:
        P = model.config.max_position_embeddings
        sd["bert.embeddings.position_ids"] = torch.arange(P, dtype=torch.int64).unsqueeze(0)
    torch.save(sd, path)

    # Check what is really stored: the decoder entries are views sharing storage with the tied
    # tensors, so the zip holds each storage once.
    back = torch.load(path, map_location="cpu", weights_only=True)

    def same_storage(a: str, b: str) -> bool:
        return back[a].untyped_storage().data_ptr() == back[b].untyped_storage().data_ptr()

    facts["decoder_weight_shares_word_embeddings"] = same_storage(
        "cls.predictions.decoder.weight", "bert.embeddings.word_embeddings.weight"
    )
    facts["decoder_bias_shares_cls_predictions_bias"] = same_storage(
        "cls.predictions.decoder.bias", "cls.predictions.bias"
    )
    facts["position_ids"] = f"{back['bert.embeddings.position_ids'].dtype} {list(back['bert.embeddings.position_ids'].shape)}"
    facts["keys"] = len(back)
    facts["float_dtypes"] = sorted({str(v.dtype) for v in back.values() if v.is_floating_point()})
    assert facts["decoder_weight_shares_word_embeddings"] and facts["decoder_bias_shares_cls_predictions_bias"]
    assert back["bert.embeddings.position_ids"].dtype == torch.int64
    assert torch.equal(back["bert.embeddings.position_ids"],
                       torch.arange(model.config.max_position_embeddings, dtype=torch.int64).unsqueeze(0))
    check_f16_file(back, ref_sd, "pytorch_model.bin", skip=set())
    return facts


# --------------------------------------------------------------------------------------------
# Forward pass with hooks (and optional edit)
# --------------------------------------------------------------------------------------------


def hook_module(model: BertForMaskedLM, hook: str) -> torch.nn.Module:
    """The module whose output is the given hook point."""
    if hook == "hook_embed":
        return model.bert.embeddings
    _, L, leaf = hook.split(".")
    layer = model.bert.encoder.layer[int(L)]
    return {
        "hook_attn_out": layer.attention.output.dense,
        "hook_resid_mid": layer.attention.output.LayerNorm,
        "hook_mlp_out": layer.output.dense,
        "hook_resid_post": layer.output.LayerNorm,
    }[leaf]


def hook_names(n_layers: int) -> list[str]:
    names = ["hook_embed"]
    for L in range(n_layers):
        names += [f"blocks.{L}.{h}" for h in ("hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post")]
    return names


def pad_batch(cells: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad with id 0; returns input_ids int64 [B, Lmax], attention_mask, lengths int64 [B]."""
    lengths = torch.tensor([len(c) for c in cells], dtype=torch.int64)
    Lmax = int(lengths.max())
    ids = torch.zeros(len(cells), Lmax, dtype=torch.int64)
    for b, c in enumerate(cells):
        ids[b, : len(c)] = torch.tensor(c, dtype=torch.int64)
    mask = (torch.arange(Lmax)[None, :] < lengths[:, None]).to(torch.int64)
    return ids, mask, lengths


def zero_pads(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Set pad positions to +0.0 (torch.where, not a multiply, so no -0.0)."""
    return torch.where(mask.bool()[..., None], x, torch.zeros((), dtype=x.dtype)).contiguous()


def make_edit_hook(edit: dict, tensors: dict):
    """Forward hook that modifies the hooked module's output at one cell's listed positions."""
    cell, pos = edit["cell"], torch.tensor(edit["positions"], dtype=torch.int64)

    def fn(_module, _inputs, output):
        out = output.clone()
        if edit["kind"] == "add":
            out[cell, pos] += edit["scale"] * tensors[edit["direction"]]
        elif edit["kind"] == "zero":
            out[cell, pos] = 0.0
        elif edit["kind"] == "replace":
            out[cell, pos] = tensors[edit["values"]]
        else:
            raise ValueError(edit["kind"])
        return out

    return fn


@torch.no_grad()
def run_hooked(model, ids, mask, edit: dict | None = None, edit_tensors: dict | None = None):
    """One forward pass; returns ({hook: tensor}, logits, hidden_states) with pad positions as computed."""
    N = model.config.num_hidden_layers
    captured: dict[str, torch.Tensor] = {}
    handles = []
    # The edit hook is registered first: forward hooks run in registration order and each one sees
    # the output returned by the previous one, so the capture hooks record the edited value.
    if edit is not None:
        handles.append(hook_module(model, edit["hook"]).register_forward_hook(make_edit_hook(edit, edit_tensors)))
    for name in hook_names(N):
        def cap(_m, _i, out, name=name):
            captured[name] = out.detach().clone()
        handles.append(hook_module(model, name).register_forward_hook(cap))
    try:
        res = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    hs = res.hidden_states
    assert len(hs) == N + 1
    # The hooks and HF's own hidden_states must agree bit for bit.
    assert torch.equal(captured["hook_embed"], hs[0]), "hook_embed != hidden_states[0]"
    for L in range(N):
        assert torch.equal(captured[f"blocks.{L}.hook_resid_post"], hs[L + 1]), f"resid_post {L} != hidden_states[{L + 1}]"
    return captured, res.logits, hs


# --------------------------------------------------------------------------------------------
# Formula weights (ragged_v1, v1_10m_full)
# --------------------------------------------------------------------------------------------


def splitmix64(key: np.ndarray) -> np.ndarray:
    """Standard splitmix64 output for state `key` (numpy uint64 arithmetic wraps mod 2^64)."""
    x = key + np.uint64(0x9E3779B97F4A7C15)
    z = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def formula_center_scale(name: str, shape: list[int], hidden_size: int) -> tuple[float, float]:
    """How the generator CHOOSES (center, scale) for a tensor. The choice is written to weights.json
    ("centers", "scales"), so a reader never needs these name rules. Scales are rounded to 4 decimals
    so that their JSON text is short and parses to the same f64 with any correct-enough parser.

    - *LayerNorm.weight: (1, 0.1); *LayerNorm.bias: (0, 0.1);
    - attention.self.{query,key}.weight: (0, 1.4·√3/√H). Uniform on [-s, s] has std s/√3, so this is
      std 1.4/√H (the N(0,(1.4/√H)²) used by `randomise_params`): attention scores have std ~2
      and the softmax is far from uniform;
    - every other Linear weight [out, in]: (0, √3/√in), i.e. std 1/√in, so that each sublayer's
      output is O(1) next to the O(1) residual (a bug in a sublayer is not hidden by the residual);
    - embeddings and all other biases (incl. cls.predictions.bias): (0, 0.05).
    """
    if name.endswith("LayerNorm.weight"):
        return 1.0, 0.1
    if name.endswith("LayerNorm.bias"):
        return 0.0, 0.1
    if name.endswith(("attention.self.query.weight", "attention.self.key.weight")):
        return 0.0, round(1.4 * math.sqrt(3.0) / math.sqrt(hidden_size), 4)
    if name.endswith(".weight") and len(shape) == 2 and ".embeddings." not in name:
        return 0.0, round(math.sqrt(3.0) / math.sqrt(shape[1]), 4)
    return 0.0, 0.05


def formula_values(seed: int, t: int, numel: int, center: float, scale: float) -> np.ndarray:
    """Values of tensor number t (row-major), as float32."""
    assert numel < 2**32 and t < 2**16
    base = ((seed << 48) & MASK64) ^ (t << 32)  # seed << 48 is taken mod 2^64
    i = np.arange(numel, dtype=np.uint64)
    z = splitmix64(np.uint64(base) ^ i)
    u = (z >> np.uint64(40)).astype(np.float64) / float(2**24)  # in [0, 1), 24 random bits
    c = np.float64(center)
    s = np.float64(scale)
    # Separate f64 operations (numpy does not fuse): d = 2u - 1 (exact), p = s*d (rounded), c + p (rounded).
    return (c + s * (2.0 * u - 1.0)).astype(np.float32)


FORMULA_RULE = (
    "names = sorted(state_dict keys minus cls.predictions.decoder.{weight,bias} and bert.embeddings.position_ids); "
    "for tensor t (index in names; shape = shapes[t], center = centers[t], scale = scales[t]), "
    "element i (row-major): key = ((seed << 48) mod 2^64) ^ (t << 32) ^ i; "
    "z = splitmix64(key) [x = key + 0x9E3779B97F4A7C15; z = (x ^ x>>30) * 0xBF58476D1CE4E5B9; "
    "z = (z ^ z>>27) * 0x94D049BB133111EB; z ^= z>>31; all mod 2^64]; u = (z >> 40) / 2^24 (f64); "
    "value = f32(center + scale*(2u - 1)), computed in f64 as separate operations (no fused multiply-add), "
    "then rounded to nearest f32; cls.predictions.decoder.weight = bert.embeddings.word_embeddings.weight and "
    "cls.predictions.decoder.bias = cls.predictions.bias (tied); bert.embeddings.position_ids = 0..P-1"
)
CENTER_SCALE_NOTE = (
    "centers/scales were chosen by the generator (formula_center_scale) and are data: (1, 0.1) for LayerNorm "
    "weights, (0, 0.1) for LayerNorm biases, (0, round(1.4*sqrt(3)/sqrt(H), 4)) for attention query/key weights, "
    "(0, round(sqrt(3)/sqrt(fan_in), 4)) for every other Linear weight [out, fan_in], (0, 0.05) for embeddings "
    "and all other biases"
)


@torch.no_grad()
def load_formula_weights(model: BertForMaskedLM, seed: int) -> dict:
    """Overwrite every weight with the formula; returns the weights.json spec plus `first16`."""
    sd = model.state_dict()
    names = sorted(k for k in sd if k not in FORMULA_SKIP)
    params = dict(model.named_parameters(remove_duplicate=False))
    params.update(dict(model.named_buffers()))
    H = model.config.hidden_size
    shapes, centers, scales, first16, sums = [], [], [], {}, []
    for t, name in enumerate(names):
        target = params[name]
        assert target.dtype == torch.float32, name
        center, scale = formula_center_scale(name, list(target.shape), H)
        vals = formula_values(seed, t, target.numel(), center, scale)
        target.copy_(torch.from_numpy(vals).reshape(target.shape))
        shapes.append(list(target.shape))
        centers.append(center)
        scales.append(scale)
        first16[name] = torch.from_numpy(vals[:16].copy())
        sums.append(math.fsum(vals.astype(np.float64)))
    # The tied decoder must have followed.
    assert model.cls.predictions.decoder.weight.data_ptr() == model.bert.embeddings.word_embeddings.weight.data_ptr()
    assert torch.equal(model.cls.predictions.decoder.bias, model.cls.predictions.bias)
    spec = {"seed": seed, "names": names, "shapes": shapes, "centers": centers, "scales": scales,
            "rule": FORMULA_RULE, "centers_scales_note": CENTER_SCALE_NOTE, "sums_f64": sums,
            "sums_note": "exactly rounded float64 sum (math.fsum) of each tensor's f32 values"}
    return {"spec": spec, "first16": first16}


@torch.no_grad()
def model_from_spec(cfg_dict: dict, spec: dict) -> BertForMaskedLM:
    """Rebuild a model from config.json + weights.json alone (no name rules: centers/scales are read
    from the spec), the way the Rust side does. Used to check that the files carry everything."""
    model = build_model(cfg_dict, seed=0)
    params = dict(model.named_parameters(remove_duplicate=False))
    sd_keys = set(model.state_dict()) - FORMULA_SKIP
    assert sorted(sd_keys) == spec["names"]
    for t, (name, shape, c, s) in enumerate(zip(spec["names"], spec["shapes"], spec["centers"], spec["scales"], strict=True)):
        vals = formula_values(spec["seed"], t, math.prod(shape), c, s)
        params[name].copy_(torch.from_numpy(vals).reshape(shape))
    return model


def write_formula_weights(out: Path, model: BertForMaskedLM, cfg_dict: dict, seed: int) -> None:
    """Load formula weights into `model`, write weights.json + weights_check.safetensors, and check
    that reading the JSON back (through text) reproduces every tensor bit for bit."""
    res = load_formula_weights(model, seed)
    spec = res["spec"]
    with open(out / "weights.json", "w") as f:
        json.dump(spec, f, indent=1)
        f.write("\n")
    save_file(res["first16"], out / "weights_check.safetensors",
              metadata=metadata(seed, "first 16 formula values of every tensor, flattened"))
    with open(out / "weights.json") as f:
        back = json.load(f)
    assert back["centers"] == spec["centers"] and back["scales"] == spec["scales"]
    rebuilt = model_from_spec(cfg_dict, back)
    ref_sd, new_sd = model.state_dict(), rebuilt.state_dict()
    for name in ref_sd:
        assert torch.equal(ref_sd[name], new_sd[name]), f"weights.json does not reproduce {name}"


@torch.no_grad()
def attention_peakedness(model: BertForMaskedLM, ids, mask) -> float:
    """Mean over layers, heads and real query rows of the largest attention probability."""
    res = model(input_ids=ids, attention_mask=mask, output_attentions=True)
    real = mask.bool()
    vals = [a.amax(-1).permute(0, 2, 1)[real].mean() for a in res.attentions]  # [B, L, heads] -> real rows
    return float(torch.stack(vals).mean())


def check_not_degenerate(name: str, model, ids, mask, hooks: dict, logits, min_std: float = 0.1) -> None:
    """Print and assert basic health: attention far from uniform, hooks and logits not tiny or huge.

    tiny_v2 keeps HF's default init (weights std 0.02), so its attn_out / mlp_out hooks are ~0.03-0.06
    and it is checked with a lower min_std; the formula models' sublayer outputs are O(1)."""
    real = mask.bool()
    peak = attention_peakedness(model, ids, mask)
    uniform = mask.shape[0] / float(mask.sum())  # mean over real rows of 1/len(cell)
    stds = {k: float(v[real].std()) for k, v in hooks.items()}
    lstd = float(logits[real].std())
    lo, hi = min(stds, key=stds.get), max(stds, key=stds.get)
    print(f"  {name}: mean attention row max {peak:.3f} (uniform {uniform:.3f}); hook std "
          f"{stds[lo]:.3f} ({lo}) .. {stds[hi]:.3f} ({hi}); logits std {lstd:.3f}")
    assert peak > max(0.1, 3 * uniform), f"{name}: attention is nearly uniform"
    assert all(min_std < s < 20 for s in stds.values()), f"{name}: hook scale out of range {stds}"
    assert min_std < lstd < 20, f"{name}: logits std {lstd}"


# --------------------------------------------------------------------------------------------
# Fixture writers
# --------------------------------------------------------------------------------------------


def metadata(seed: int, desc: str) -> dict:
    """safetensors __metadata__. A single key: the safetensors writer stores the metadata in a hash
    map, so with several keys their order in the header (and the file bytes) varies run to run."""
    info = {
        "generator": "tests/reference/make_geneformer_fixtures.py",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "seed": seed,
        "description": desc,
    }
    return {"info": json.dumps(info, sort_keys=True)}


def write_tokens(out: Path, cells: list[list[int]]) -> None:
    with open(out / "tokens.json", "w") as f:
        json.dump({"input_ids": cells}, f)
        f.write("\n")


def check_reload(model_dir: Path, ids, mask, logits_ref) -> None:
    """Reload the saved model with transformers (as f32) and check the logits are unchanged (tying, keys,
    and for tiny_v2 the f16 -> f32 cast)."""
    m = BertForMaskedLM.from_pretrained(model_dir, attn_implementation="eager", dtype=torch.float32).eval()
    with torch.no_grad():
        lg = m(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(lg, logits_ref), f"reload of {model_dir} changed the logits"


def distinct_genes(rng: np.random.Generator, lo: int, hi: int, n: int) -> list[int]:
    """n distinct ids from lo..hi inclusive."""
    return [int(x) for x in rng.choice(np.arange(lo, hi + 1), size=n, replace=False)]


def make_tiny_v2(configs_dir: Path, out: Path, seed: int = 1234) -> dict:
    cfg = load_real_config(
        configs_dir,
        "Geneformer-V2-104M",
        dict(hidden_size=128, num_attention_heads=2, num_hidden_layers=4, intermediate_size=256,
             vocab_size=96, max_position_embeddings=64),
    )
    V, P, H, N = cfg["vocab_size"], cfg["max_position_embeddings"], cfg["hidden_size"], cfg["num_hidden_layers"]
    model = build_model(cfg, seed)
    randomise_params(model, seed + 1)
    # Weights are stored in f16: round them first, and compute everything below in f32 with the
    # rounded values, so the f16 files hold the reference weights exactly.
    f16_stats = round_params_to_f16(model)
    ref_sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model16 = f16_copy(model)

    # V2 cells: [<cls>=2, genes..., <eos>=3], distinct gene ids from 4..V-1; total lengths 64 (=P), 20, 7.
    rng = np.random.default_rng(seed + 2)
    cells = [[2] + distinct_genes(rng, 4, V - 1, n - 2) + [3] for n in (P, 20, 7)]
    ids, mask, lengths = pad_batch(cells)

    out.mkdir(parents=True, exist_ok=True)
    save_safetensors_model(model16, ref_sd, cfg, out)
    bin_facts = save_bin_model(model16, out / "pytorch_model.bin", ref_sd)
    del model16
    write_tokens(out, cells)

    hooks, logits, _ = run_hooked(model, ids, mask)
    check_reload(out, ids, mask, logits)  # loads model.safetensors
    check_not_degenerate("tiny_v2", model, ids, mask, hooks, logits, min_std=0.02)
    tensors = {"input_ids": ids, "lengths": lengths}
    tensors.update({k: zero_pads(v, mask) for k, v in hooks.items()})
    tensors["logits"] = zero_pads(logits, mask)

    # ---- ablation edits ----
    g = torch.Generator().manual_seed(seed + 3)

    def unit(n):
        v = torch.randn(n, generator=g, dtype=torch.float32)
        return (v / v.norm()).contiguous()

    tensors["edit_dir.add_resid_post1"] = unit(H)
    tensors["edit_values.replace_attn_out2"] = torch.randn(2, H, generator=g, dtype=torch.float32)
    tensors["edit_dir.add_embed"] = unit(H)
    edits = [
        {"name": "add_resid_post1", "hook": "blocks.1.hook_resid_post", "kind": "add", "cell": 0,
         "positions": [1, 3, 5, 40], "scale": 2.5, "direction": "edit_dir.add_resid_post1"},
        {"name": "zero_mlp_out0", "hook": "blocks.0.hook_mlp_out", "kind": "zero", "cell": 1,
         "positions": list(range(int(lengths[1])))},
        {"name": "replace_attn_out2", "hook": "blocks.2.hook_attn_out", "kind": "replace", "cell": 2,
         "positions": [0, 6], "values": "edit_values.replace_attn_out2"},
        {"name": "add_embed", "hook": "hook_embed", "kind": "add", "cell": 1,
         "positions": [2], "scale": -1.0, "direction": "edit_dir.add_embed"},
    ]
    for e in edits:
        eh, elogits, _ = run_hooked(model, ids, mask, edit=e, edit_tensors=tensors)
        # Sanity: the edit took effect at the hook and left other cells untouched.
        for b in range(len(cells)):
            same = torch.equal(elogits[b], logits[b])
            assert same == (b != e["cell"]), (e["name"], b)
        # Only the last layer's residual stream and the logits are stored (size): every edit hook is
        # upstream of blocks.{N-1}.hook_resid_post, so a wrong edit shows there.
        last = f"blocks.{N - 1}.hook_resid_post"
        assert not torch.equal(eh[last][e["cell"]], hooks[last][e["cell"]]), e["name"]
        tensors[f"edit.{e['name']}.{last}"] = zero_pads(eh[last], mask)
        tensors[f"edit.{e['name']}.logits"] = zero_pads(elogits, mask)

    with open(out / "edits.json", "w") as f:
        json.dump(edits, f, indent=2)
        f.write("\n")
    save_file(tensors, out / "expected.safetensors",
              metadata=metadata(seed, "tiny_v2: all hooks, logits, edits (last resid_post + logits)"))
    # Nothing above may have changed the weights the reference was computed with.
    for k, v in model.state_dict().items():
        assert torch.equal(v, ref_sd[k]), k
    return {"bin": bin_facts, "f16": f16_stats}


def make_ragged_v1(configs_dir: Path, out: Path, seed: int = 4321) -> dict:
    cfg = load_real_config(
        configs_dir,
        "Geneformer-V1-10M",
        dict(hidden_size=192, num_attention_heads=3, num_hidden_layers=3, intermediate_size=384,
             vocab_size=80, max_position_embeddings=48),
    )
    V = cfg["vocab_size"]
    model = build_model(cfg, seed)

    # V1 cells: genes only (ids 2..V-1, distinct), lengths 48 (=P), 31, 9, 1.
    rng = np.random.default_rng(seed + 2)
    cells = [distinct_genes(rng, 2, V - 1, n) for n in (48, 31, 9, 1)]
    ids, mask, lengths = pad_batch(cells)

    out.mkdir(parents=True, exist_ok=True)
    write_config(out, cfg)
    write_tokens(out, cells)
    write_formula_weights(out, model, cfg, RAGGED_FORMULA_SEED)
    hooks, logits, _ = run_hooked(model, ids, mask)
    check_not_degenerate("ragged_v1", model, ids, mask, hooks, logits)
    tensors = {"input_ids": ids, "lengths": lengths}
    tensors.update({k: zero_pads(v, mask) for k, v in hooks.items()})
    tensors["logits"] = zero_pads(logits, mask)
    save_file(tensors, out / "expected.safetensors",
              metadata=metadata(seed, "ragged_v1: formula weights, all hooks, logits"))
    return {}


def make_v1_10m_full(configs_dir: Path, out: Path, seed: int = 99) -> dict:
    cfg = load_real_config(configs_dir, "Geneformer-V1-10M")
    V, N = cfg["vocab_size"], cfg["num_hidden_layers"]
    model = build_model(cfg, seed)

    rng = np.random.default_rng(seed)
    cells = [distinct_genes(rng, 2, V - 1, n) for n in (64, 29)]
    ids, mask, lengths = pad_batch(cells)

    out.mkdir(parents=True, exist_ok=True)
    write_config(out, cfg)
    write_tokens(out, cells)
    write_formula_weights(out, model, cfg, V1_FULL_FORMULA_SEED)

    hooks, logits, _ = run_hooked(model, ids, mask)
    check_not_degenerate("v1_10m_full", model, ids, mask, hooks, logits)
    tensors = {"input_ids": ids, "lengths": lengths}
    for name in ["hook_embed"] + [f"blocks.{L}.hook_resid_post" for L in range(N)]:
        tensors[name] = zero_pads(hooks[name], mask)
    sel = [(0, 0), (0, 1), (0, 63), (1, 0), (1, 28)]
    tensors["logits_cells"] = torch.tensor([c for c, _ in sel], dtype=torch.int64)
    tensors["logits_positions"] = torch.tensor([p for _, p in sel], dtype=torch.int64)
    tensors["logits_subset"] = torch.stack([logits[c, p] for c, p in sel]).contiguous()
    save_file(tensors, out / "expected.safetensors",
              metadata=metadata(seed, "v1_10m_full: formula weights, hidden states, logits subset"))
    return {}


def dir_size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "tests/fixtures/geneformer")
    ap.add_argument("--configs-dir", type=Path, default=REPO.parent / "shared/data/geneformer/configs")
    args = ap.parse_args()

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    print(f"torch {torch.__version__}  transformers {transformers.__version__}  numpy {np.__version__}")
    facts = {}
    for name, fn in (("tiny_v2", make_tiny_v2), ("ragged_v1", make_ragged_v1), ("v1_10m_full", make_v1_10m_full)):
        d = args.out / name
        if d.exists():
            shutil.rmtree(d)
        facts[name] = fn(args.configs_dir, d)
        print(f"{name:12s} {dir_size(d) / 1e6:7.3f} MB")
        for f in sorted(d.iterdir()):
            print(f"    {f.name:28s} {f.stat().st_size:>10,d} B")
    print("pytorch_model.bin facts:", json.dumps(facts["tiny_v2"]["bin"]))
    f16 = dict(facts["tiny_v2"]["f16"])
    f16["tensors_with_subnormals"] = len(f16.pop("subnormal_by_tensor"))
    print("tiny_v2 f16 rounding:", json.dumps(f16))
    print(f"total        {dir_size(args.out) / 1e6:7.3f} MB")


if __name__ == "__main__":
    main()
