#!/usr/bin/env python3
"""Generate the scGPT whole-human parity fixtures under tests/fixtures/scgpt/.

The reference is the torch-only rebuild in scgpt_reference.py (nn.TransformerEncoder, post-norm, f32, eval,
MHA fast path off, random seeded weights; docs/models.md §3, §5, §7). Three folders are written:

  tiny/               E=64, 4 heads (head dim 16), d_hid=48 (≠ E on purpose: a loader that assumes
                      d_hid = E fails), 2 layers, 40 genes + <pad>, <cls>, <eoc> (V=43).
                      best_model.pt     torch.save(state_dict), flash layout (`self_attn.Wqkv.*` and
                                        `flag_encoder.weight`, the key set of the real checkpoint)
                      args.json         the real args.json with embsize/nlayers/nheads/d_hid overridden
                      vocab.json        {symbol: id}, 40 real gene symbols + the 3 specials last, keys in a
                                        shuffled order (the real file is not ordered by id either)
                      input.json        {"gene_ids": [[...]], "values": [[...]]}, 4 ragged cells
                      expected.safetensors   inputs, every hook, expr_pred, mvc_pred, cell_embedding
  tiny_torch_layout/  the SAME weights in torch's layout (`self_attn.in_proj_*`, no flag_encoder) as
                      model.safetensors (no best_model.pt), args.json, vocab.json (same bytes as tiny/).
                      Tests reuse tiny/input.json and tiny/expected.safetensors.
  width512/           the real width: E=512, 8 heads, d_hid=512, 2 layers and the REAL 60,697-token vocab.
                      best_model.pt.gz  gzip of the flash-layout torch.save file (~143 MB unpacked)
                      vocab.json.gz     gzip of the real vocab.json (byte-identical when unpacked)
                      args.json, input.json (3 cells), expected.safetensors (inputs, hook_embed,
                      blocks.L.hook_resid_post, expr_pred, mvc_pred, cell_embedding).
                      To stay small: embedding rows not used by the cells are 0 (the file still holds the
                      full [60697, 512] table), the large matrices keep a random 10 % of their entries
                      (scaled by 1/√0.1, same std; --width512-density), and every weight is rounded to a
                      multiple of 2^-9. The reference is computed with exactly these weights.

Cells: position 0 is <cls> (value -2), then distinct genes (non-special ids) with binned values 1..50 as
floats. Cell 1 of tiny and cell 0 of width512 also carry the mask value -1 (twice) and a raw value 900.0 above
the 512 clamp (the clamp is upper-only; random weights make it matter: asserted).

expected.safetensors (every float F32; pad positions +0.0):
  gene_ids I64 [B, Lmax] (right-padded with the <pad> id), values F32 [B, Lmax] (padded with -2),
  lengths I64 [B], hook tensors F32 [B, Lmax, E], expr_pred F32 [B, Lmax], mvc_pred F32 [B, Lmax],
  cell_embedding F32 [B, E] (raw CLS state of the last layer, not normalised).

Checks made while generating: the module reference equals an independent plain-tensor forward
(scgpt_reference.manual_forward) to 1e-5; attention is far from uniform and every hook is O(1); each saved
checkpoint (incl. the unpacked .gz) reloads through scgpt_reference.load_model_dir to bit-identical outputs;
the values -1 and 900 change hook_embed.

Run from the repository root (deterministic: re-running gives byte-identical files for a given torch version;
~1 min, most of it gzip):

    /tmp/pyenv/venv/bin/python tests/reference/make_scgpt_fixtures.py [--out tests/fixtures/scgpt]
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import safetensors
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scgpt_reference as ref  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
GENERATOR = "tests/reference/make_scgpt_fixtures.py"


def gzip_file(src: Path, dst: Path) -> None:
    """gzip with mtime=0 and a fixed name in the header, so that reruns are byte-identical."""
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        with gzip.GzipFile(filename=dst.name[:-3], mode="wb", compresslevel=9, fileobj=fo, mtime=0) as gz:
            shutil.copyfileobj(fi, gz, length=1 << 20)


def gunzip_file(src: Path, dst: Path) -> None:
    with gzip.open(src, "rb") as fi, open(dst, "wb") as fo:
        shutil.copyfileobj(fi, fo, length=1 << 20)


def reference_outputs(model: ref.ScGPTRef, cells_ids, cells_vals, pad_id: int):
    ids, vals, pad, lengths = ref.pad_cells(cells_ids, cells_vals, pad_id)
    out = ref.run_reference(model, ids, vals, pad)
    return out, ids, vals, pad, lengths


def assert_same_outputs(a: dict, b: dict, what: str) -> None:
    for k, v in a.items():
        if k != "layer_inputs":
            assert torch.equal(v, b[k]), f"{what}: {k} differs after reload"


def check_special_values(model: ref.ScGPTRef, ids, vals, pad, cell: int) -> None:
    """-1 and 900 must reach hook_embed differently from their neighbours' handling: compare with the
    value encoder run without the clamp, and with -1 replaced by 0."""
    E = model.cfg["E"]
    with torch.no_grad():
        g, h0 = model.embed(ids, vals)
        ve = model.value_encoder
        raw = ve.norm(ve.linear2(torch.relu(ve.linear1(vals[..., None]))))  # no clamp
        pos900 = (vals[cell] > ref.MAX_VALUE).nonzero()[:, 0]
        d_clamp = float((raw[cell, pos900] + g[cell, pos900] - h0[cell, pos900]).abs().max())
        pos_mask = (vals[cell] == ref.MASK_VALUE).nonzero()[:, 0]
        v0 = ve(torch.zeros_like(vals))
        d_mask = float((v0[cell, pos_mask] + g[cell, pos_mask] - h0[cell, pos_mask]).abs().max())
    print(f"  hook_embed change if the 900 were not clamped: {d_clamp:.3f}; if the -1 were 0: {d_mask:.3f} (E={E})")
    assert len(pos900) and len(pos_mask) and d_clamp > 1e-2 and d_mask > 1e-2


def add_special_values(vals: list[list[float]], cell: int, rng: np.random.Generator) -> None:
    """Two mask values (-1) and one raw value 900 (> the 512 clamp) at random gene positions of `cell`."""
    pos = rng.choice(np.arange(1, len(vals[cell])), size=3, replace=False)
    vals[cell][int(pos[0])] = ref.MASK_VALUE
    vals[cell][int(pos[1])] = ref.MASK_VALUE
    vals[cell][int(pos[2])] = 900.0


def print_keys(path: Path, sd: dict) -> None:
    print(f"  {path.name}: {len(sd)} tensors, keys:")
    for k, v in sd.items():
        if ".layers." in k and ".layers.0." not in k:
            continue
        print(f"      {k:52s} {str(v.dtype):14s} {list(v.shape)}")
    if any(".layers.1." in k for k in sd):
        print("      (transformer_encoder.layers.1..N-1: same keys as layers.0)")


# --------------------------------------------------------------------------------------------
# tiny/ and tiny_torch_layout/
# --------------------------------------------------------------------------------------------


def make_tiny(out_tiny: Path, out_torch: Path, seed: int = 2024) -> None:
    E, H, D, N, n_genes = 64, 4, 48, 2, 40
    rng = np.random.default_rng(seed)
    real_vocab = json.loads((ref.REAL_DIR / "vocab.json").read_text())
    real_genes = sorted((i, s) for s, i in real_vocab.items() if s not in ref.SPECIALS)
    pick = sorted(rng.choice(len(real_genes), size=n_genes, replace=False))
    vocab = ref.make_vocab([real_genes[i][1] for i in pick])
    pad_id, cls_id, _ = ref.special_ids(vocab)

    model = ref.ScGPTRef(len(vocab), E, H, D, N, pad_id)
    ref.randomise_(model, seed + 1)

    # Ragged: the longest cell is not first, so cell 0 has pad positions too.
    cells_ids, cells_vals = ref.random_cells(rng, n_genes, cls_id, [23, 9, 30, 16])
    add_special_values(cells_vals, 1, rng)
    out, ids, vals, pad, lengths = reference_outputs(model, cells_ids, cells_vals, pad_id)
    worst = ref.check_against_manual(model, out, ids, vals, pad)
    print(f"  tiny: module reference vs manual forward: max rel err {worst:.1e}")
    ref.health("tiny", model, out, pad)
    check_special_values(model, ids, vals, pad, 1)

    for d in (out_tiny, out_torch):
        d.mkdir(parents=True, exist_ok=True)
        ref.write_args_json(d, E, N, H, D)
    ref.write_vocab_json(out_tiny, vocab, seed + 2)
    shutil.copyfile(out_tiny / "vocab.json", out_torch / "vocab.json")
    ref.save_checkpoint(model, out_tiny, "flash", "pt")
    ref.save_checkpoint(model, out_torch, "torch", "safetensors")
    ref.write_input_json(out_tiny / "input.json", cells_ids, cells_vals)

    names = ref.hook_names(N) + ["expr_pred", "mvc_pred", "cell_embedding"]
    tensors = ref.expected_tensors(out, ids, vals, pad, lengths, names)
    save_file(tensors, out_tiny / "expected.safetensors",
              metadata=ref.safetensors_metadata(GENERATOR, seed, "tiny: E=64 H=4 d_hid=48 N=2 V=43, all hooks + heads"))

    for d in (out_tiny, out_torch):
        again = ref.load_model_dir(d)
        out2, *_ = reference_outputs(again, cells_ids, cells_vals, pad_id)
        assert_same_outputs(out, out2, str(d))
        assert torch.equal(again.flag_encoder.weight, model.flag_encoder.weight) == (d == out_tiny)
    print_keys(out_tiny / "best_model.pt", ref.read_checkpoint(out_tiny / "best_model.pt"))
    print_keys(out_torch / "model.safetensors", ref.read_checkpoint(out_torch / "model.safetensors"))


# --------------------------------------------------------------------------------------------
# width512/
# --------------------------------------------------------------------------------------------


def make_width512(out_dir: Path, density: float, seed: int = 512) -> None:
    E, H, D, N = 512, 8, 512, 2
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = json.loads((ref.REAL_DIR / "vocab.json").read_text())
    pad_id, cls_id, _ = ref.special_ids(vocab)
    V = len(vocab)
    assert (V, pad_id, cls_id) == (60697, 60694, 60695), (V, pad_id, cls_id)

    model = ref.ScGPTRef(V, E, H, D, N, pad_id)
    ref.randomise_(model, seed + 1)
    cells_ids, cells_vals = ref.random_cells(rng, pad_id, cls_id, [40, 61, 12])
    add_special_values(cells_vals, 0, rng)
    with torch.no_grad():
        used = torch.zeros(V, dtype=torch.bool)
        used[torch.tensor([i for c in cells_ids for i in c])] = True
        # Rows no cell uses (the pad row included) are 0: they gzip to almost nothing.
        model.encoder.embedding.weight[~used] = 0.0
    kept = ref.sparsify_(model, density, seed + 3)
    moved = ref.quantise_(model, 2.0**-9)
    print(f"  width512: {int(used.sum())} embedding rows used; large matrices keep {kept:,} entries "
          f"(density {density}); 2^-9 rounding moved weights by ≤ {moved:.2e}")

    out, ids, vals, pad, lengths = reference_outputs(model, cells_ids, cells_vals, pad_id)
    worst = ref.check_against_manual(model, out, ids, vals, pad)
    print(f"  width512: module reference vs manual forward: max rel err {worst:.1e}")
    ref.health("width512", model, out, pad)
    check_special_values(model, ids, vals, pad, 0)

    ref.write_args_json(out_dir, E, N, H, D)
    ref.write_input_json(out_dir / "input.json", cells_ids, cells_vals)
    names = ["hook_embed"] + [f"blocks.{L}.hook_resid_post" for L in range(N)] + ["expr_pred", "mvc_pred", "cell_embedding"]
    tensors = ref.expected_tensors(out, ids, vals, pad, lengths, names)
    save_file(tensors, out_dir / "expected.safetensors",
              metadata=ref.safetensors_metadata(
                  GENERATOR, seed, f"width512: E=512 H=8 d_hid=512 N=2, real vocab V=60697; unused embedding rows 0, "
                  f"matrices density {density}, weights multiples of 2^-9; hook_embed, resid_post, heads"))

    with tempfile.TemporaryDirectory(prefix="scgpt-width512-") as tmp:
        tmp = Path(tmp)
        ref.save_checkpoint(model, tmp, "flash", "pt")
        gzip_file(tmp / "best_model.pt", out_dir / "best_model.pt.gz")
        gzip_file(ref.REAL_DIR / "vocab.json", out_dir / "vocab.json.gz")
        raw_size = (tmp / "best_model.pt").stat().st_size

        # What the Rust test does: unpack both next to args.json and load.
        unpacked = tmp / "unpacked"
        unpacked.mkdir()
        gunzip_file(out_dir / "best_model.pt.gz", unpacked / "best_model.pt")
        gunzip_file(out_dir / "vocab.json.gz", unpacked / "vocab.json")
        shutil.copyfile(out_dir / "args.json", unpacked / "args.json")
        assert (unpacked / "vocab.json").read_bytes() == (ref.REAL_DIR / "vocab.json").read_bytes()
        again = ref.load_model_dir(unpacked)
        out2, *_ = reference_outputs(again, cells_ids, cells_vals, pad_id)
        assert_same_outputs(out, out2, "width512 (unpacked)")
        sd = ref.read_checkpoint(unpacked / "best_model.pt")
        print(f"  width512: best_model.pt unpacked {raw_size:,} B")
        print_keys(out_dir / "best_model.pt.gz", sd)


def dir_size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def describe_expected(path: Path) -> None:
    with safetensors.safe_open(str(path), "pt") as f:
        for k in f.keys():
            sl = f.get_slice(k)
            print(f"      {k:32s} {sl.get_dtype():4s} {sl.get_shape()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "tests/fixtures/scgpt")
    ap.add_argument("--width512-density", type=float, default=0.1,
                    help="fraction of entries kept in width512's large matrices (1 = dense; ~+3 MB gzipped)")
    args = ap.parse_args()

    # One thread: the fixture is tiny, and a fixed thread count keeps BLAS summation order (and so the
    # expected bytes) the same on every machine.
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}  safetensors {safetensors.__version__}  numpy {np.__version__}")
    folders = {"tiny": args.out / "tiny", "tiny_torch_layout": args.out / "tiny_torch_layout",
               "width512": args.out / "width512"}
    for d in folders.values():
        if d.exists():
            shutil.rmtree(d)
    make_tiny(folders["tiny"], folders["tiny_torch_layout"])
    make_width512(folders["width512"], args.width512_density)

    for name, d in folders.items():
        print(f"{name:18s} {dir_size(d) / 1e6:7.3f} MB")
        for f in sorted(d.iterdir()):
            print(f"    {f.name:24s} {f.stat().st_size:>10,d} B")
            if f.name == "expected.safetensors":
                describe_expected(f)
    print(f"total              {dir_size(args.out) / 1e6:7.3f} MB")


if __name__ == "__main__":
    main()
