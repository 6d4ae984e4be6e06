#!/usr/bin/env python3
"""Build scinterp's embedded assets: real cells and two small models trained on them (issue 19, items 1-2).

A generator run by hand (never at test time). From the repository root, with ../shared/data present and a
built scinterp binary (the tokenizers are scinterp's own, called through its CLI):

    python -m venv /tmp/venv-assets && /tmp/venv-assets/bin/pip install -r models/assets/requirements.txt
    /tmp/venv-assets/bin/python models/assets/train.py all --scinterp target/debug/scinterp

Steps (each a sub-command; `all` runs them in order):
  cells       models/assets/cells/: paul15 (mouse; genes with a human ortholog, one per human symbol) and
              pbmc68k_reduced's integer counts, as gzip .h5ad (CSR counts) with their labels, the total counts
              over all genes (`n_counts`) and a seeded 15 % held-out split (obs `split`); the ortholog rows of
              the kept paul15 genes; the Geneformer V2 dictionaries cut down to the genes of these cells
              (checked: they give byte-identical tokens to the full dictionaries).
  geneformer  tokenizes the cells with `scinterp tokenize --model-kind geneformer-v2`, trains a small
              BertForMaskedLM (Geneformer V2 shape, real V2 vocabulary) with 15 % MLM masking (80/10/10), and
              writes models/assets/geneformer/ (config.json, f16 model.safetensors, dictionaries,
              expected.safetensors for the Rust parity test) plus its held-out metrics.
  scgpt       writes the scGPT vocab.json (the genes of the cells), tokenizes with `scinterp tokenize
              --model-kind scgpt`, trains a small scGPT (masked expression prediction: MSE on masked values
              plus the MVC objective, as scGPT pretrains), and writes models/assets/scgpt/.

Everything is seeded (--seed) and runs on a fixed number of CPU threads (--threads; the committed weights: 1
per model, and the default --gf-max-steps / --sg-max-steps); metrics go to models/assets/metrics.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import pickle
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / "models" / "assets"
OUT = ASSETS  # where the models and metrics.json go (--out); the cells and dictionaries are read from ASSETS
HELDOUT_FRACTION = 0.15
V2_SPECIALS = {"<pad>": 0, "<mask>": 1, "<cls>": 2, "<eos>": 3}
NON_CANDIDATE_BIAS = -30.0  # the MLM bias of the V2 tokens that cannot occur in these cells
MAX_LEN = 256  # tokens per cell (specials included) for both models: the top-ranked 254 genes for Geneformer


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------------------
# cells
# ------------------------------------------------------------------------------------------------


def heldout_split(n: int, seed: int) -> np.ndarray:
    """'train' / 'heldout' per cell: a seeded random 15 %."""
    rng = np.random.default_rng(seed)
    held = np.zeros(n, dtype=bool)
    held[rng.permutation(n)[: int(round(HELDOUT_FRACTION * n))]] = True
    return np.where(held, "heldout", "train")


def write_h5ad_gz(adata, path: Path) -> None:
    import anndata as ad  # noqa: F401

    tmp = path.with_suffix("")  # x.h5ad
    # Uncompressed inside, gzip outside: smaller than HDF5's own per-chunk gzip on these matrices.
    adata.write_h5ad(tmp)
    with open(tmp, "rb") as fi, open(path, "wb") as fo:
        with gzip.GzipFile(filename=tmp.name, mode="wb", compresslevel=9, fileobj=fo, mtime=0) as gz:
            shutil.copyfileobj(fi, gz)
    tmp.unlink()


def first_orthologs(table: Path) -> tuple[dict[str, str], list[str]]:
    """mouse symbol -> first human symbol in file order (scinterp's rule), and the file's lines."""
    lines = table.read_text().splitlines()
    first: dict[str, str] = {}
    for line in lines:
        human, _, mouse = line.partition(",")
        human, mouse = human.strip(), mouse.strip()
        if human and mouse and mouse not in first:
            first[mouse] = human
    return first, lines


def make_cells(data: Path, work: Path, seed: int) -> None:
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp
    import zarr
    from anndata.io import read_elem

    out = ASSETS / "cells"
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)

    # paul15: dense integer counts (mouse); keep the genes with a human ortholog, one mouse gene per human
    # symbol (the first in column order), so that neither tokenizer sees a human gene twice.
    raw = work / "paul15.h5ad"
    with gzip.open(data / "cells" / "paul15.h5ad.gz") as f, open(raw, "wb") as o:
        shutil.copyfileobj(f, o)
    p = ad.read_h5ad(raw)
    X = np.asarray(p.X)
    assert np.all(X == np.round(X)) and X.min() >= 0, "paul15 X is not integer counts"
    table = data / "orthologs" / "Ensembl105_Human2Mouse_Genes.csv"
    first, lines = first_orthologs(table)
    keep, seen_human = [], set()
    for j, g in enumerate(p.var_names):
        h = first.get(g)
        if h is not None and h not in seen_human:
            seen_human.add(h)
            keep.append(j)
    counts = sp.csr_matrix(X[:, keep].astype(np.uint16))
    assert counts.max() == X[:, keep].max()
    obs = pd.DataFrame(
        {
            "paul15_clusters": p.obs["paul15_clusters"].astype("category").values,
            "n_counts": X.sum(axis=1).astype(np.float64),  # over ALL genes, before the restriction
            "split": pd.Categorical(heldout_split(p.n_obs, seed)),
        },
        index=p.obs_names.astype(str),
    )
    var = pd.DataFrame({"human_symbol": [first[g] for g in p.var_names[keep]]}, index=p.var_names[keep].astype(str))
    q = ad.AnnData(X=counts, obs=obs, var=var)
    q.uns["iroot"] = int(p.uns["iroot"])
    write_h5ad_gz(q, out / "paul15.h5ad.gz")
    kept = set(q.var_names)
    rows = [ln for ln in lines if ln.partition(",")[2].strip() in kept]
    (out / "paul15_orthologs.csv").write_text("\n".join(rows) + "\n")
    log(f"paul15: {q.n_obs} cells x {q.n_vars} of {p.n_vars} genes (one per human ortholog), iroot {q.uns['iroot']}")

    # pbmc68k_reduced: the zarr's layers/counts (integer counts over 765 genes); n_counts from obs (the
    # total over all genes of the original data).
    zdir = work / "pbmc68k.zarr"
    if zdir.exists():
        shutil.rmtree(zdir)
    zipfile.ZipFile(data / "cells" / "pbmc68k_reduced.zarr.zip").extractall(zdir)
    g = zarr.open_group(str(zdir), mode="r", use_consolidated=False)
    C = sp.csr_matrix(read_elem(g["layers/counts"]))
    pobs = read_elem(g["obs"])
    pvar = read_elem(g["var"])
    assert np.all(C.data == np.round(C.data)), "pbmc68k layers/counts is not integer"
    n_counts = pobs["n_counts"].to_numpy(np.float64)
    assert np.all(n_counts + 1e-6 >= np.asarray(C.sum(axis=1)).ravel()), "n_counts below the 765-gene total"
    obs = pd.DataFrame(
        {
            "bulk_labels": pobs["bulk_labels"].astype("category").values,
            "louvain": pobs["louvain"].astype("category").values,
            "n_counts": n_counts,
            "split": pd.Categorical(heldout_split(C.shape[0], seed + 1)),
        },
        index=pobs.index.astype(str),
    )
    assert C.max() < 65536
    b = ad.AnnData(X=C.astype(np.uint16), obs=obs, var=pd.DataFrame(index=pvar.index.astype(str)))
    write_h5ad_gz(b, out / "pbmc68k.h5ad.gz")
    log(f"pbmc68k: {b.n_obs} cells x {b.n_vars} genes")

    # Geneformer V2 dictionaries restricted to what these cells can reach.
    src = data / "geneformer" / "v2"
    dst = ASSETS / "geneformer"
    dst.mkdir(parents=True, exist_ok=True)
    load = lambda n: pickle.load(open(src / f"{n}_gc104M.pkl", "rb"))  # noqa: E731
    tokens, medians, names, mapping = (load(n) for n in ("token_dictionary", "gene_median_dictionary",
                                                          "gene_name_id_dict", "ensembl_mapping_dict"))
    symbols = set(var["human_symbol"]) | set(b.var_names)
    up = {s.upper() for s in symbols}
    names_k = {k: v for k, v in names.items() if k in symbols or k.upper() in up}
    reach = up | {v.upper() for v in names_k.values()} | set(names_k.values())
    mapping_k = {k: v for k, v in mapping.items() if k in reach}
    targets = set(mapping_k.values()) | set(names_k.values())
    tokens_k = {k: v for k, v in tokens.items() if k in V2_SPECIALS or k in targets}
    medians_k = {k: v for k, v in medians.items() if k in tokens_k}
    for n, d in (("token_dictionary", tokens_k), ("gene_median_dictionary", medians_k),
                 ("gene_name_id_dict", names_k), ("ensembl_mapping_dict", mapping_k)):
        with open(dst / f"{n}_gc104M.pkl", "wb") as f:
            pickle.dump(d, f, protocol=4)
    log(f"V2 dictionaries cut to {len(tokens_k)} tokens, {len(medians_k)} medians, {len(names_k)} symbols, "
        f"{len(mapping_k)} mapping entries")


# ------------------------------------------------------------------------------------------------
# scinterp tokenize + token store
# ------------------------------------------------------------------------------------------------


REUSE_TOKENS = False  # --reuse-tokens: keep token stores that an earlier run's `scinterp tokenize` wrote


def run_scinterp(scinterp: str, args: list[str]) -> None:
    out = Path(args[args.index("--out") + 1])
    if REUSE_TOKENS and (out / "manifest.json").exists():
        log(f"reusing the token store {out} (written by scinterp tokenize)")
        return
    cmd = [scinterp, "tokenize", "--threads", "2", "--quiet", "--overwrite"] + args
    subprocess.run(cmd, check=True)


def tokenize_geneformer(scinterp: str, dicts: Path, out: Path) -> dict[str, Path]:
    cells = ASSETS / "cells"
    stores = {}
    for name, extra in (
        ("paul15", ["--gene-ids", "symbol", "--orthologs", str(cells / "paul15_orthologs.csv"),
                    "--obs-columns", "paul15_clusters,split"]),
        ("pbmc68k", ["--gene-ids", "symbol", "--obs-columns", "bulk_labels,split"]),
    ):
        store = out / f"gf_{name}"
        run_scinterp(scinterp, ["--input", str(cells / f"{name}.h5ad.gz"), "--model-kind", "geneformer-v2",
                                "--dictionaries", str(dicts), "--max-len", str(MAX_LEN), "--out", str(store)] + extra)
        stores[name] = store
    return stores


def tokenize_scgpt(scinterp: str, model_dir: Path, out: Path, seed: int) -> dict[str, Path]:
    cells = ASSETS / "cells"
    stores = {}
    for name, extra in (
        ("paul15", ["--orthologs", str(cells / "paul15_orthologs.csv"), "--obs-columns", "paul15_clusters,split"]),
        ("pbmc68k", ["--obs-columns", "bulk_labels,split"]),
    ):
        store = out / f"sg_{name}"
        run_scinterp(scinterp, ["--input", str(cells / f"{name}.h5ad.gz"), "--model-kind", "scgpt", "--vocab",
                                str(model_dir), "--max-len", str(MAX_LEN), "--seed", str(seed), "--out",
                                str(store)] + extra)
        stores[name] = store
    return stores


def read_store(store: Path):
    """(cells as int64 arrays, values arrays or None, cells.tsv header, rows)."""
    tokens = np.load(store / "tokens.npy")
    offsets = np.load(store / "offsets.npy")
    values = np.load(store / "values.npy") if (store / "values.npy").exists() else None
    cells = [tokens[offsets[i]:offsets[i + 1]].astype(np.int64) for i in range(len(offsets) - 1)]
    vals = None if values is None else [values[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]
    lines = (store / "cells.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    rows = [ln.split("\t") for ln in lines[1:]]
    assert len(rows) == len(cells), store
    return cells, vals, header, rows


def split_of(header: list[str], rows: list[list[str]]) -> np.ndarray:
    return np.array([r[header.index("split")] == "heldout" for r in rows])


def load_split(stores: dict[str, Path]):
    """train / held-out lists of (dataset, cell index, tokens, values)."""
    train, held = [], []
    for name, store in stores.items():
        cells, vals, header, rows = read_store(store)
        is_held = split_of(header, rows)
        for i, c in enumerate(cells):
            item = (name, i, c, None if vals is None else vals[i])
            (held if is_held[i] else train).append(item)
    return train, held


def lr_factor(step: int, warmup: int) -> float:
    """Linear warm-up, then inverse-square-root decay. It does not depend on the run's length, so a run
    stopped after epoch k (--stop-file) is exactly the run with `--*-epochs k`."""
    s = step + 1
    return min(s / warmup, math.sqrt(warmup / s))


def stop_requested(args, step: int, what: str) -> bool:
    """After `step` steps: --gf-max-steps / --sg-max-steps reached, or the --stop-file exists (checked every
    10 steps: a wall-clock budget on a shared machine without giving up reproducibility, since the metrics
    record the steps run and `--*-max-steps <steps>` repeats exactly that run)."""
    limit = args.gf_max_steps if what == "geneformer" else args.sg_max_steps
    if limit > 0 and step >= limit:
        return True
    if step % 10 == 0 and args.stop_file is not None and args.stop_file.exists():
        flag = "gf" if what == "geneformer" else "sg"
        log(f"{what}: {args.stop_file} exists: stopping after {step} steps (rerun: --{flag}-max-steps {step})")
        return True
    return False


def batches(items: list, batch_size: int, rng: np.random.Generator) -> list[list]:
    """Length-bucketed batches in a seeded random order (less padding, same cells every epoch)."""
    order = sorted(range(len(items)), key=lambda i: (len(items[i][2]), i))
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(chunks)
    return [[items[i] for i in ch] for ch in chunks]


# ------------------------------------------------------------------------------------------------
# Geneformer
# ------------------------------------------------------------------------------------------------


def geneformer_config(args) -> dict:
    # The key set of the real V2 config.json, at a small size (head_dim 64: the GPU kernels apply).
    return {
        "architectures": ["BertForMaskedLM"],
        "attention_probs_dropout_prob": 0.02,
        "classifier_dropout": None,
        "hidden_act": "relu",
        "hidden_dropout_prob": 0.02,
        "hidden_size": args.gf_hidden,
        "initializer_range": 0.02,
        "intermediate_size": 2 * args.gf_hidden,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": MAX_LEN,
        "model_type": "bert",
        "num_attention_heads": args.gf_hidden // 64,
        "num_hidden_layers": args.gf_layers,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "torch_dtype": "float16",
        "type_vocab_size": 2,
        "use_cache": True,
        "vocab_size": 20275,
    }


def pad_batch(cells: list[np.ndarray], pad: int):
    import torch

    L = max(len(c) for c in cells)
    ids = torch.full((len(cells), L), pad, dtype=torch.long)
    att = torch.zeros((len(cells), L), dtype=torch.long)
    for b, c in enumerate(cells):
        ids[b, : len(c)] = torch.from_numpy(c)
        att[b, : len(c)] = 1
    return ids, att


def mlm_mask(cells: list[np.ndarray], rng: np.random.Generator, genes: np.ndarray, train: bool):
    """Geneformer pretraining masking: 15 % of the gene positions (never <cls>/<eos>), at least one per cell;
    in training 80 % become <mask>, 10 % a random gene token (from `genes`, the gene tokens these cells can
    contain), 10 % stay. Returns (inputs, [(cell, pos, target)])."""
    inputs, targets = [], []
    for b, c in enumerate(cells):
        n_genes = len(c) - 2
        k = max(1, int(round(0.15 * n_genes)))
        pos = 1 + rng.choice(n_genes, size=k, replace=False)
        x = c.copy()
        for p in pos:
            r = rng.random() if train else 0.0
            if r < 0.8:
                x[p] = V2_SPECIALS["<mask>"]
            elif r < 0.9:
                x[p] = genes[rng.integers(len(genes))]
            targets.append((b, int(p), int(c[p])))
        inputs.append(x)
    return inputs, targets


def gf_forward_masked(model, cells_in: list[np.ndarray], targets, cand=None):
    """MLM logits at the target positions only (the head over 20,275 tokens at every position would cost
    more than the encoder). With `cand` (sorted token ids), only those columns of the tied decoder are
    computed and the targets are returned as indices into `cand` (training: the other ~17k tokens of the
    V2 vocabulary cannot occur in these cells, their bias is pinned far below, see train_geneformer)."""
    import torch

    ids, att = pad_batch(cells_in, 0)
    seq = model.bert(input_ids=ids, attention_mask=att).last_hidden_state
    b = torch.tensor([t[0] for t in targets])
    p = torch.tensor([t[1] for t in targets])
    y = torch.tensor([t[2] for t in targets])
    if cand is None:
        return model.cls(seq[b, p]), y
    head = model.cls.predictions
    h = head.transform(seq[b, p])
    logits = h @ head.decoder.weight[cand].T + head.bias[cand]
    return logits, torch.searchsorted(cand, y)


def round_to_f16_(model) -> None:
    import torch

    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(t.half().float())


def train_geneformer(args, work: Path, metrics: dict) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import BertConfig, BertForMaskedLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = OUT / "geneformer"
    out.mkdir(parents=True, exist_ok=True)
    stores = tokenize_geneformer(args.scinterp, ASSETS / "geneformer", work)
    if args.data:  # the cut dictionaries must tokenize exactly as the full ones
        full = tokenize_geneformer(args.scinterp, args.data / "geneformer" / "v2", work / "full_dicts")
        for name in stores:
            for f in ("tokens.npy", "offsets.npy"):
                a, b = (stores[name] / f).read_bytes(), (full[name] / f).read_bytes()
                assert a == b, f"{name}/{f}: cut dictionaries tokenize differently"
        log("cut V2 dictionaries: tokens identical to the full dictionaries")
    train, held = load_split(stores)
    train = train[: args.max_train_cells]
    log(f"geneformer: {len(train)} train / {len(held)} held-out cells, "
        f"mean length {np.mean([len(c[2]) for c in train]):.0f}")

    cfg_dict = geneformer_config(args)
    cfg = BertConfig(**{k: v for k, v in cfg_dict.items() if k not in ("architectures", "torch_dtype")})
    cfg._attn_implementation = "sdpa"
    model = BertForMaskedLM(cfg)
    V = cfg.vocab_size
    # The gene tokens these cells can contain: those of the cut V2 dictionary (the other ~17k V2 tokens
    # never occur in the inputs and never are targets).
    tokdict = pickle.load(open(ASSETS / "geneformer" / "token_dictionary_gc104M.pkl", "rb"))
    genes = np.array(sorted(v for v in tokdict.values() if v >= len(V2_SPECIALS)), dtype=np.int64)
    cand = torch.from_numpy(genes)
    with torch.no_grad():
        # Start the MLM bias at the log training frequencies (add-one over the candidate genes), so that the
        # steps go into what the context adds beyond the frequency prior; the other tokens (specials, genes
        # these cells lack) get a bias far below, not trained (training scores the candidates only).
        cnt = np.zeros(V)
        cnt[genes] = 1.0
        for _, _, c, _ in train:
            np.add.at(cnt, c[1:-1], 1)
        bias = np.full(V, NON_CANDIDATE_BIAS)
        bias[genes] = np.log(cnt[genes] / cnt[genes].sum())
        model.cls.predictions.bias.copy_(torch.from_numpy(bias).float())
    # No weight decay on biases and LayerNorm parameters (as BERT).
    decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.001}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.gf_lr)
    rng = np.random.default_rng(args.seed)
    n_steps = args.gf_epochs * math.ceil(len(train) / args.batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, args.warmup_steps))
    t0, step = time.time(), 0
    model.train()
    for epoch in range(args.gf_epochs):
        tot, n, run_l, run_n = 0.0, 0, 0.0, 0
        for bt in batches(train, args.batch, rng):
            inp, tg = mlm_mask([c[2] for c in bt], rng, genes, train=True)
            logits, y = gf_forward_masked(model, inp, tg, cand)
            loss = torch.nn.functional.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            tot += float(loss.detach()) * len(y)
            n += len(y)
            run_l, run_n = run_l + float(loss.detach()) * len(y), run_n + len(y)
            if step % 50 == 0:
                log(f"geneformer step {step}/{n_steps}: train MLM loss {run_l / run_n:.3f} ({time.time() - t0:.0f} s)")
                run_l, run_n = 0.0, 0
            if stop_requested(args, step, "geneformer"):
                break
        else:
            log(f"geneformer epoch {epoch + 1}/{args.gf_epochs}: train MLM loss {tot / n:.3f} ({time.time() - t0:.0f} s)")
            continue
        break
    train_s = time.time() - t0
    model.eval()
    round_to_f16_(model)  # evaluate exactly the weights that are committed

    # Held-out: the same seeded masks (all <mask>) for the model and the priors.
    erng = np.random.default_rng(args.seed + 100)
    held_masks = [mlm_mask([c[2]], erng, genes, train=False) for c in held]
    freq = np.zeros(V)  # add-one over the gene tokens these cells can contain (as the model's bias start)
    freq[genes] = 1.0
    pos_counts = np.zeros((MAX_LEN, V))
    for _, _, c, _ in train:
        np.add.at(freq, c[1:-1], 1)
        np.add.at(pos_counts, (np.arange(1, len(c) - 1), c[1:-1]), 1)
    p_freq = freq / freq.sum()
    # The rank/position prior: each position's gene distribution in the training cells, smoothed towards
    # the frequency prior.
    alpha = 10.0
    pos_prior = (pos_counts + alpha * p_freq) / (pos_counts.sum(1, keepdims=True) + alpha)

    res = {k: [0.0, 0, 0] for k in ("model", "frequency_prior", "position_prior", "position_prior_unseen")}
    per_ds: dict[str, list] = {}

    def add(k, prob_vec, target):
        res[k][0] += -math.log(max(prob_vec[target], 1e-30))
        res[k][1] += int(np.argmax(prob_vec) == target)
        res[k][2] += 1

    with torch.no_grad():
        for (ds, _, c, _), (inp, tg) in zip(held, held_masks):
            logits, y = gf_forward_masked(model, inp, tg)
            probs = torch.softmax(logits.double(), -1).numpy()
            visible = set(int(g) for g in inp[0][1:-1]) - {1}
            for (_, p, t), pr in zip(tg, probs):
                add("model", pr, t)
                d = per_ds.setdefault(ds, [0, 0])
                d[0] += int(np.argmax(pr) == t)
                d[1] += 1
                add("frequency_prior", p_freq, t)
                pp = pos_prior[p]
                add("position_prior", pp, t)
                q = pp.copy()
                q[list(visible)] = 0  # a gene appears once per cell: the visible ones are not candidates
                add("position_prior_unseen", q / q.sum(), t)
    summary = {k: {"top1_accuracy": v[1] / v[2], "cross_entropy_nats": v[0] / v[2], "n_masked": v[2]}
               for k, v in res.items()}
    for ds, (hit, n) in per_ds.items():
        summary["model"][f"top1_accuracy_{ds}"] = hit / n
    metrics["geneformer"] = {"heldout": summary, "train_seconds": round(train_s, 1), "steps": step,
                             "epochs": step // math.ceil(len(train) / args.batch), "lr": args.gf_lr,
                             "n_train_cells": len(train), "n_heldout_cells": len(held),
                             "genes_seen_in_training": int((freq[4:] > 1).sum())}
    log("geneformer held-out: " + json.dumps(summary))

    # Weights: f16, the key set of the real V2 safetensors (tied decoder omitted).
    sd = {k: v.half().contiguous() for k, v in model.state_dict().items()
          if k not in ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias",
                       "bert.embeddings.position_ids", "bert.embeddings.token_type_ids")}
    save_file(sd, out / "model.safetensors", metadata={"format": "pt"})
    with open(out / "config.json", "w") as f:
        json.dump(cfg_dict, f, indent=2, sort_keys=True)
        f.write("\n")
    write_geneformer_expected(model, held, out / "expected.safetensors")


def write_geneformer_expected(model, held, path: Path) -> None:
    """Torch's forward (eager attention, f32 on the f16-rounded weights) on two held-out cells, cut short
    to keep the file small: every resid_post and the logits at a few positions."""
    import torch
    from safetensors.torch import save_file

    cells = []
    for ds in ("paul15", "pbmc68k"):
        c = next(c for d, _, c, _ in held if d == ds)
        cells.append(np.concatenate([c[:48], c[-1:]]) if ds == "paul15" else np.concatenate([c[:30], c[-1:]]))
    model.config._attn_implementation = "eager"
    model.bert.config._attn_implementation = "eager"
    ids, att = pad_batch(cells, 0)
    with torch.no_grad():
        o = model(input_ids=ids, attention_mask=att, output_hidden_states=True)
    lengths = torch.tensor([len(c) for c in cells])
    keep = (torch.arange(ids.shape[1])[None] < lengths[:, None]).float()
    t = {"input_ids": ids, "lengths": lengths, "hook_embed": o.hidden_states[0] * keep[..., None]}
    for L in range(len(o.hidden_states) - 1):
        t[f"blocks.{L}.hook_resid_post"] = (o.hidden_states[L + 1] * keep[..., None]).contiguous()
    cells_idx, positions = [0, 0, 0, 1, 1, 1], [0, 5, 20, 3, 12, 30]
    t["logits_cells"] = torch.tensor(cells_idx)
    t["logits_positions"] = torch.tensor(positions)
    t["logits_subset"] = torch.stack([o.logits[c, p] for c, p in zip(cells_idx, positions)]).contiguous()
    save_file({k: v.contiguous() for k, v in t.items()}, path,
              metadata={"generator": "models/assets/train.py", "what": "torch eager f32 on the f16 weights"})


# ------------------------------------------------------------------------------------------------
# scGPT
# ------------------------------------------------------------------------------------------------


def scgpt_vocab(symbols: list[str]) -> dict[str, int]:
    vocab = {s: i for i, s in enumerate(sorted(set(symbols)))}
    for s in ("<pad>", "<cls>", "<eoc>"):
        vocab[s] = len(vocab)
    return vocab


def train_scgpt(args, work: Path, metrics: dict) -> None:
    import anndata as ad
    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, str(REPO / "tests" / "reference"))
    import scgpt_reference as ref

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = OUT / "scgpt"
    out.mkdir(parents=True, exist_ok=True)
    cells = ASSETS / "cells"
    syms = []
    for name, col in (("paul15", "human_symbol"), ("pbmc68k", None)):
        tmp = work / f"{name}.h5ad"
        with gzip.open(cells / f"{name}.h5ad.gz") as f, open(tmp, "wb") as o:
            shutil.copyfileobj(f, o)
        a = ad.read_h5ad(tmp, backed="r")
        syms += list(a.var[col]) if col else list(a.var_names)
    vocab = scgpt_vocab(syms)
    with open(out / "vocab.json", "w") as f:
        json.dump(vocab, f)
        f.write("\n")
    E, H, D, N = args.sg_hidden, args.sg_hidden // 64, args.sg_hidden, args.sg_layers
    real = json.loads((args.data / "scgpt" / "whole-human" / "args.json").read_text()) if args.data else {}
    real.update(embsize=E, nlayers=N, nheads=H, d_hid=D, max_seq_len=MAX_LEN, dropout=0.1,
                epochs=args.sg_epochs, lr=args.sg_lr, batch_size=args.batch, data_source="scinterp models/assets/cells",
                save_dir=None, vocab_path="vocab.json", world_size=1, distributed=False, fp16=False,
                fast_transformer=False, USE_GENERATIVE_TRAINING=False, seed=args.seed)
    with open(out / "args.json", "w") as f:
        json.dump(real, f, indent=2)
        f.write("\n")
    stores = tokenize_scgpt(args.scinterp, out, work, args.seed)
    train, held = load_split(stores)
    train = train[: args.max_train_cells]
    pad_id, cls_id = vocab["<pad>"], vocab["<cls>"]
    log(f"scgpt: vocab {len(vocab)}, {len(train)} train / {len(held)} held-out cells, "
        f"mean length {np.mean([len(c[2]) for c in train]):.0f}")

    model = ref.ScGPTRef(len(vocab), E, H, D, N, pad_id)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.1
    with torch.no_grad():
        # The heads regress bins 1..50 from unit-scale activations: start the ExprDecoder's output bias at the
        # training cells' mean bin (otherwise hundreds of Adam steps go into reaching the scale at all).
        mean_bin = float(np.mean(np.concatenate([c[3][1:] for c in train])))
        model.decoder.fc[4].bias.fill_(mean_bin)
    opt = torch.optim.AdamW(model.parameters(), lr=args.sg_lr, weight_decay=0.0)
    rng = np.random.default_rng(args.seed)
    n_steps = args.sg_epochs * math.ceil(len(train) / args.batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, args.warmup_steps))

    def make_batch(bt, ratio: float, r: np.random.Generator):
        ids, vals, pad, _ = ref.pad_cells([list(map(int, c[2])) for c in bt], [list(map(float, c[3])) for c in bt], pad_id)
        target = vals.clone()
        masked = torch.zeros_like(pad)
        for b, c in enumerate(bt):
            n = len(c[2]) - 1
            k = max(1, int(round(ratio * n)))
            masked[b, 1 + torch.from_numpy(r.choice(n, size=k, replace=False))] = True
        inp = torch.where(masked, torch.full_like(vals, ref.MASK_VALUE), vals)
        return ids, inp, pad, target, masked

    def forward(ids, inp, pad):
        g, h0 = model.embed(ids, inp)
        h = model.transformer_encoder(h0, src_key_padding_mask=pad)
        return model.heads(g, h)

    t0, step = time.time(), 0
    model.train()
    for epoch in range(args.sg_epochs):
        tot, n = 0.0, 0
        for bt in batches(train, args.batch, rng):
            ratio = float(rng.choice([0.25, 0.5, 0.75]))  # scGPT's mask_ratio list
            ids, inp, pad, target, masked = make_batch(bt, ratio, rng)
            o = forward(ids, inp, pad)
            gep = torch.nn.functional.mse_loss(o["expr_pred"][masked], target[masked])
            gepc = torch.nn.functional.mse_loss(o["mvc_pred"][masked], target[masked])
            # The MVC term enters linearly over the first --sg-mvc-ramp-steps steps: from the start, its large
            # error (the head has no bias to reach the bins) swamps the shared encoder's gradient and the
            # ExprDecoder's predictions collapse to a constant for ~100 steps. Then the full objective, as scGPT.
            loss = gep + min(1.0, step / max(1, args.sg_mvc_ramp_steps)) * gepc
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            tot += float(gep.detach()) * int(masked.sum())
            n += int(masked.sum())
            if step % 50 == 0:
                log(f"scgpt step {step}/{n_steps}: masked MSE {float(gep):.1f}, MVC {float(gepc):.1f} "
                    f"({time.time() - t0:.0f} s)")
            if stop_requested(args, step, "scgpt"):
                break
        else:
            log(f"scgpt epoch {epoch + 1}/{args.sg_epochs}: train masked MSE {tot / n:.2f} ({time.time() - t0:.0f} s)")
            continue
        break
    train_s = time.time() - t0
    model.eval()
    round_to_f16_(model)

    # Baselines from the training cells: each gene's mean bin where it is expressed, and the global mean.
    s, c = np.zeros(len(vocab)), np.zeros(len(vocab))
    for _, _, ids_, vals_ in train:
        np.add.at(s, ids_[1:], vals_[1:])
        np.add.at(c, ids_[1:], 1)
    glob = s.sum() / c.sum()
    gene_mean = np.where(c > 0, s / np.maximum(c, 1), glob)
    summary = {}
    torch.backends.mha.set_fastpath_enabled(False)
    for ratio in (0.15, 0.5):
        r = np.random.default_rng(args.seed + 100)
        err = {"model": 0.0, "model_mvc": 0.0, "gene_mean": 0.0, "global_mean": 0.0, "cell_visible_mean": 0.0}
        n = 0
        with torch.no_grad():
            for i in range(0, len(held), args.batch):
                bt = held[i:i + args.batch]
                ids, inp, pad, target, masked = make_batch(bt, ratio, r)
                o = forward(ids, inp, pad)
                t = target[masked].double()
                err["model"] += float(((o["expr_pred"][masked].double() - t) ** 2).sum())
                err["model_mvc"] += float(((o["mvc_pred"][masked].double() - t) ** 2).sum())
                gm = torch.from_numpy(gene_mean)[ids[masked]]
                err["gene_mean"] += float(((gm - t) ** 2).sum())
                err["global_mean"] += float(((glob - t) ** 2).sum())
                vis = (~masked & ~pad).clone()
                vis[:, 0] = False
                cm = (torch.where(vis, target, 0).sum(1) / vis.sum(1).clamp(min=1)).double()
                cm = cm[:, None].expand_as(target)[masked]
                err["cell_visible_mean"] += float(((cm - t) ** 2).sum())
                n += int(masked.sum())
        summary[f"mask_{ratio}"] = {k: v / n for k, v in err.items()} | {"n_masked": n}
    metrics["scgpt"] = {"heldout_mse_bins": summary, "train_seconds": round(train_s, 1), "steps": step,
                        "epochs": step // math.ceil(len(train) / args.batch), "lr": args.sg_lr,
                        "n_train_cells": len(train), "n_heldout_cells": len(held), "vocab_size": len(vocab),
                        "genes_seen_in_training": int((c > 0).sum())}
    log("scgpt held-out: " + json.dumps(summary))

    sd = {k: v.half().contiguous() for k, v in ref.state_dict_in_layout(model, "torch").items()}
    save_file(sd, out / "model.safetensors", metadata={"format": "pt"})

    # Parity fixture: two held-out cells (cut short), every hook and both heads, torch f32.
    picked = []
    for ds, cut in (("paul15", 40), ("pbmc68k", 25)):
        _, _, ids_, vals_ = next(h for h in held if h[0] == ds)
        picked.append((list(map(int, ids_[:cut])), list(map(float, vals_[:cut]))))
    picked[0][1][3] = ref.MASK_VALUE  # a masked value, as in training
    ids, vals, pad, lengths = ref.pad_cells([p[0] for p in picked], [p[1] for p in picked], pad_id)
    o = ref.run_reference(model, ids, vals, pad)
    names = ref.hook_names(N) + ["expr_pred", "mvc_pred", "cell_embedding"]
    save_file(ref.expected_tensors(o, ids, vals, pad, lengths, names), out / "expected.safetensors",
              metadata={"generator": "models/assets/train.py", "what": "torch f32 on the f16 weights"})


# ------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["cells", "geneformer", "scgpt", "all"])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--scinterp", default=str(REPO / "target" / "debug" / "scinterp"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/scinterp-assets-work"))
    ap.add_argument("--out", type=Path, default=ASSETS, help="where the models and metrics.json are written")
    ap.add_argument("--seed", type=int, default=19)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--gf-hidden", type=int, default=128)
    ap.add_argument("--gf-layers", type=int, default=3)
    ap.add_argument("--max-train-cells", type=int, default=None, help="for smoke tests only")
    ap.add_argument("--gf-epochs", type=int, default=30, help="at most (--gf-max-steps ends it first)")
    ap.add_argument("--gf-lr", type=float, default=2e-3)
    ap.add_argument("--warmup-steps", type=int, default=100, help="linear warm-up, then lr·sqrt(warm-up/step)")
    # The committed weights: 670 / 680 steps (the run was stopped by --stop-file); 0 = no limit.
    ap.add_argument("--gf-max-steps", type=int, default=670, help="end Geneformer training after this many steps")
    ap.add_argument("--sg-max-steps", type=int, default=680, help="end scGPT training after this many steps")
    ap.add_argument("--stop-file", type=Path, default=None,
                    help="end training at the first epoch boundary after this file appears")
    ap.add_argument("--reuse-tokens", action="store_true",
                    help="keep the token stores under --work that an earlier run's scinterp tokenize wrote")
    ap.add_argument("--sg-hidden", type=int, default=128)
    ap.add_argument("--sg-layers", type=int, default=3)
    ap.add_argument("--sg-epochs", type=int, default=30, help="at most (--sg-max-steps ends it first)")
    ap.add_argument("--sg-lr", type=float, default=1e-3)
    ap.add_argument("--sg-mvc-ramp-steps", type=int, default=200, help="steps over which the MVC loss weight ramps to 1")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    global OUT, REUSE_TOKENS
    OUT = args.out
    REUSE_TOKENS = args.reuse_tokens
    mpath = OUT / "metrics.json"
    metrics: dict = {}
    if args.step in ("cells", "all"):
        make_cells(args.data, args.work, args.seed)
    if args.step in ("geneformer", "all"):
        train_geneformer(args, args.work, metrics)
    if args.step in ("scgpt", "all"):
        train_scgpt(args, args.work, metrics)
    if args.step != "cells":
        import torch

        for m in metrics.values():
            m["command"] = " ".join(["models/assets/train.py"] + sys.argv[1:])
            m["versions"] = {"torch": torch.__version__, "numpy": np.__version__}
        # Read just before writing: the two models may be trained by separate runs at the same time.
        merged = json.loads(mpath.read_text()) if mpath.exists() else {}
        merged.update(metrics)
        mpath.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
