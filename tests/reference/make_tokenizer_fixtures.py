"""Reference fixtures for scinterp's Geneformer tokenizer (rank value encoding).

This script re-implements, independently and with numpy only, the arithmetic of Geneformer's
``TranscriptomeTokenizer`` (``geneformer/tokenizer.py``: ``sum_ensembl_ids``, ``tokenize_anndata`` /
``tokenize_loom``, ``rank_genes`` and ``create_dataset``'s truncation) and writes small JSON fixtures that
the Rust tests in ``models/src/tokenize/geneformer.rs`` compare against exactly.

What it reproduces, per the published code:

1. gene collapsing: the Ensembl mapping dictionary is filtered to targets present in the token
   dictionary; each gene id is upper-cased and mapped; genes without a mapping are dropped; counts of
   genes mapping to the same target are summed;
2. ``x = count / n_counts * 10_000 / median`` in float64, in exactly that order;
3. genes with ``x > 0`` are ranked by ``argsort(-x)``;
4. truncation: V2 ``[<cls>] + genes[:size - 2] + [<eos>]``, V1 ``genes[:size]``; empty cells are dropped.

For symbol inputs (``gene_id_kind = "symbol"``) each symbol first goes through ``gene_name_id_dict``
(exact match); a symbol missing there is passed on unchanged to step 1 (the V2 mapping dictionary also
holds upper-case aliases).

Ties: numpy's ``argsort(-x)`` is unstable, so the fixtures record the order scinterp promises (descending
x, then ascending index of the first source column of the collapsed gene) and, for the tie fixture, the
tie groups (runs of equal x) that the tests compare as sets. The script asserts that numpy's own
(unstable) order over the upstream column layout agrees with these groups.

Fixture layout (``tests/fixtures/tokenizer/<name>.json``)::

    {"name", "description", "version": "V1"|"V2", "gene_id_kind": "ensembl"|"symbol",
     "collapse_gene_ids": true, "model_input_size": int,
     "n_cells", "n_genes", "gene_ids": [...],
     "coo": {"row": [...], "col": [...], "val": [...]},       # integer counts, row-major
     "n_counts": [...] | null,                                 # null: the tokenizer computes row totals
     "expected": {"tokens": [[...]], "kept_cells": [...], "dropped_cells": [...],
                  "tie_groups": [[[...], ...], ...] | null,    # per kept cell, runs of equal x (sets)
                  "n_genes_mapped": int, "n_genes_unmapped": int, "n_targets": int}}

How to run (from the repository root; needs only numpy; reads the real dictionaries)::

    /tmp/pyenv/venv/bin/python tests/reference/make_tokenizer_fixtures.py \
        [--dicts /work/shared/data/geneformer] [--out tests/fixtures/tokenizer]

It is deterministic (seeded); running it again gives byte-identical files.
"""

import argparse
import json
import os
import pickle

import numpy as np

SUFFIX = {"V1": "gc30M", "V2": "gc104M"}
SUBDIR = {"V1": "v1", "V2": "v2"}
DEFAULT_SIZE = {"V1": 2048, "V2": 4096}
TARGET_SUM = 10_000.0


def load_dicts(root, version):
    d = os.path.join(root, SUBDIR[version])
    s = SUFFIX[version]

    def load(name):
        with open(os.path.join(d, f"{name}_{s}.pkl"), "rb") as f:
            return pickle.load(f)

    tok = {k: int(v) for k, v in load("token_dictionary").items()}
    med = {k: float(v) for k, v in load("gene_median_dictionary").items()}
    names = load("gene_name_id_dict")
    mapping = load("ensembl_mapping_dict")
    return tok, med, names, mapping


def reference_tokenize(dicts, version, gene_ids, X, n_counts, kind, size):
    """Independent re-implementation. X: dense float64 cells x genes counts."""
    tok, med, names, mapping = dicts
    # filtered mapping, as in TranscriptomeTokenizer.__init__
    mapping = {k: v for k, v in mapping.items() if v in tok}
    if kind == "symbol":
        ids = [names.get(g, g) for g in gene_ids]
    else:
        ids = list(gene_ids)
    targets = [mapping.get(g.upper()) for g in ids]
    # only genes in the vocabulary that have a median ("genelist_dict" + norm factors); specials never map
    targets = [t if (t is not None and t in med) else None for t in targets]
    mapped_cols = [j for j, t in enumerate(targets) if t is not None]
    n_unmapped = len(gene_ids) - len(mapped_cols)

    # scinterp layout: one column per target, ordered by its first source column
    order = []
    first = {}
    for j in mapped_cols:
        t = targets[j]
        if t not in first:
            first[t] = j
            order.append(t)
    Xc = np.zeros((X.shape[0], len(order)), dtype=np.float64)
    pos = {t: i for i, t in enumerate(order)}
    for j in mapped_cols:
        Xc[:, pos[targets[j]]] += X[:, j]
    medians = np.array([med[t] for t in order], dtype=np.float64)
    tokens_vec = np.array([tok[t] for t in order], dtype=np.int64)

    # upstream layout (sum_ensembl_ids, h5ad branch): non-duplicated targets in column order, then the
    # summed duplicated targets in order of first occurrence
    counts = {}
    for j in mapped_cols:
        counts[targets[j]] = counts.get(targets[j], 0) + 1
    up_order = [t for t in order if counts[t] == 1] + [t for t in order if counts[t] > 1]
    up_idx = np.array([pos[t] for t in up_order], dtype=np.int64)

    out_tokens, kept, dropped, ties = [], [], [], []
    for c in range(X.shape[0]):
        x = Xc[c] / n_counts[c] * TARGET_SUM / medians
        nz = np.nonzero(x > 0)[0]
        # scinterp: descending x, ties by ascending first source column (= ascending position in `order`)
        ours = nz[np.lexsort((nz, -x[nz]))]
        # upstream: argsort(-x) over the upstream column layout (default, unstable kind)
        xu = x[up_idx]
        nzu = np.nonzero(xu)[0]
        up = up_idx[nzu][np.argsort(-xu[nzu])]
        # group runs of equal x and check that both orders agree as sets within each run
        groups = []
        i = 0
        while i < len(ours):
            k = i
            while k + 1 < len(ours) and x[ours[k + 1]] == x[ours[i]]:
                k += 1
            assert set(ours[i : k + 1]) == set(up[i : k + 1]), "tie groups disagree"
            groups.append(sorted(int(tokens_vec[g]) for g in ours[i : k + 1]))
            i = k + 1
        genes = [int(t) for t in tokens_vec[ours]]
        if version == "V2":
            cells = [tok["<cls>"]] + genes[: size - 2] + [tok["<eos>"]]
        else:
            cells = genes[:size]
        if len(genes) == 0:
            dropped.append(c)
            continue
        kept.append(c)
        out_tokens.append(cells)
        ties.append(groups)
    return {
        "tokens": out_tokens,
        "kept_cells": kept,
        "dropped_cells": dropped,
        "tie_groups": ties,
        "n_genes_mapped": len(mapped_cols),
        "n_genes_unmapped": n_unmapped,
        "n_targets": len(order),
    }


def distinct_x(X, gene_cols_to_med, n_counts):
    """True when no two positive normalised values of a cell are equal (columns already collapsed)."""
    for c in range(X.shape[0]):
        vals = [X[c, j] / n_counts[c] * TARGET_SUM / m for j, m in gene_cols_to_med if X[c, j] > 0]
        if len(vals) != len(set(vals)):
            return False
    return True


def to_fixture(name, description, version, kind, gene_ids, X, n_counts_given, size, expected, tie):
    rows, cols = np.nonzero(X)
    return {
        "name": name,
        "description": description,
        "version": version,
        "gene_id_kind": kind,
        "collapse_gene_ids": True,
        "model_input_size": size,
        "n_cells": int(X.shape[0]),
        "n_genes": int(X.shape[1]),
        "gene_ids": list(gene_ids),
        "coo": {
            "row": [int(r) for r in rows],
            "col": [int(c) for c in cols],
            "val": [int(X[r, c]) for r, c in zip(rows, cols)],
        },
        "n_counts": None if n_counts_given is None else [float(v) for v in n_counts_given],
        "expected": {
            "tokens": expected["tokens"],
            "kept_cells": expected["kept_cells"],
            "dropped_cells": expected["dropped_cells"],
            "tie_groups": expected["tie_groups"] if tie else None,
            "n_genes_mapped": expected["n_genes_mapped"],
            "n_genes_unmapped": expected["n_genes_unmapped"],
            "n_targets": expected["n_targets"],
        },
    }


def gene_panel(rng, dicts, version, n_plain):
    """Gene ids: plain Ensembl ids, aliases, a collapsing pair, a lower-case id and unknown ids."""
    tok, med, names, mapping = dicts
    fm = {k: v for k, v in mapping.items() if v in tok}
    plain_pool = sorted(k for k in tok if k.startswith("ENSG") and fm.get(k) == k and k in med)
    plain = list(rng.choice(plain_pool, size=n_plain, replace=False))
    used = set(plain)
    extra = []
    if version == "V2":
        # aliases (non-Ensembl keys of the mapping dictionary) whose targets are not otherwise in the panel
        aliases = sorted(k for k, v in fm.items() if not k.startswith("ENSG") and v not in used and v in med)
        for a in rng.choice(aliases, size=6, replace=False):
            extra.append(str(a))
            used.add(fm[a])
        # an alias in lower case (upper-cased before mapping)
        low = sorted(k for k, v in fm.items() if not k.startswith("ENSG") and k.isalpha() and v not in used)
        a = str(rng.choice(low))
        extra.append(a.lower())
        used.add(fm[a])
        # two ids collapsing to one target: a retired Ensembl id and its canonical id
        retired = sorted(k for k, v in fm.items() if k.startswith("ENSG") and k != v and v not in used)
        r = str(rng.choice(retired))
        extra += [r, fm[r]]
        used.add(fm[r])
        # and an alias of a gene already in the panel (a second collapse)
        t = plain[3]
        al = sorted(k for k, v in fm.items() if v == t and k != t)
        if al:
            extra.append(al[0])
    else:
        # V1's mapping is the identity: only case differences collapse
        pool = [k for k in plain_pool if k not in used]
        p = str(rng.choice(pool))
        extra += [p, p.lower()]
        used.add(p)
    # not in the dictionaries at all
    extra += ["ENSG99999999999", "NOT_A_GENE"]
    # an Ensembl id with a median but no token (non-coding gene in V2; absent from the V1 vocabulary)
    nontok = sorted(k for k in med if k not in tok and k.startswith("ENSG") and fm.get(k) is None)
    if nontok:
        extra.append(str(rng.choice(nontok)))
    ids = plain + extra
    perm = rng.permutation(len(ids))
    return [str(ids[i]) for i in perm]


def random_counts(rng, n_cells, n_genes, density):
    X = rng.integers(1, 60, size=(n_cells, n_genes)).astype(np.float64)
    X *= rng.random((n_cells, n_genes)) < density
    return X


def make_distinct(rng, dicts, version, kind, gene_ids, n_cells, density, zero_cell, give_n_counts):
    tok, med, names, mapping = dicts
    fm = {k: v for k, v in mapping.items() if v in tok}
    for _attempt in range(1000):
        X = random_counts(rng, n_cells, len(gene_ids), density)
        if zero_cell is not None:
            X[zero_cell] = 0
        totals = X.sum(axis=1)
        if give_n_counts:
            n_counts = totals + rng.integers(0, 500, size=n_cells)
        else:
            n_counts = totals.copy()
        n_counts_safe = np.where(n_counts > 0, n_counts, 1.0)
        # collapse for the check
        ids = [names.get(g, g) if kind == "symbol" else g for g in gene_ids]
        tg = [fm.get(g.upper()) for g in ids]
        order = []
        for t in tg:
            if t is not None and t in med and t not in order:
                order.append(t)
        Xc = np.zeros((n_cells, len(order)))
        for j, t in enumerate(tg):
            if t is not None and t in med:
                Xc[:, order.index(t)] += X[:, j]
        if distinct_x(Xc, [(i, med[t]) for i, t in enumerate(order)], n_counts_safe):
            return X, (n_counts if give_n_counts else None), n_counts
    raise RuntimeError("could not draw tie-free counts")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dicts", default="/work/shared/data/geneformer")
    ap.add_argument("--out", default="tests/fixtures/tokenizer")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(20261122)
    fixtures = []

    for version in ("V2", "V1"):
        dicts = load_dicts(args.dicts, version)
        tok, med, names, mapping = dicts
        v = version.lower()

        # 1. Ensembl ids, n_counts supplied, one all-zero cell, default input size
        ids = gene_panel(rng, dicts, version, 190)
        X, given, n_counts = make_distinct(rng, dicts, version, "ensembl", ids, 6, 0.5, 2, True)
        exp = reference_tokenize(dicts, version, ids, X, n_counts, "ensembl", DEFAULT_SIZE[version])
        fixtures.append(
            to_fixture(f"{v}_ensembl", "Ensembl ids with aliases, a collapsing pair, unknown ids, an all-zero "
                       "cell; n_counts supplied", version, "ensembl", ids, X, given,
                       DEFAULT_SIZE[version], exp, False)
        )

        # 2. same kind of panel, n_counts computed from the row totals, small input size (truncation)
        ids = gene_panel(rng, dicts, version, 150)
        size = 12 if version == "V2" else 10
        X, given, n_counts = make_distinct(rng, dicts, version, "ensembl", ids, 5, 0.6, None, False)
        exp = reference_tokenize(dicts, version, ids, X, n_counts, "ensembl", size)
        fixtures.append(
            to_fixture(f"{v}_truncated_computed_n_counts", "n_counts absent (row totals over all genes); "
                       f"model_input_size {size}", version, "ensembl", ids, X, given, size, exp, False)
        )

        # 3. gene symbols through gene_name_id_dict
        fm = {k: vv for k, vv in mapping.items() if vv in tok}
        inv = {}
        for s, e in sorted(names.items()):
            if fm.get(e.upper()) == e and e in med and e not in inv:
                inv[e] = s
        syms = sorted(inv.values())
        picked = [str(s) for s in rng.choice(syms, size=120, replace=False)]
        picked += ["NOT_A_SYMBOL", "ENSG99999999999"]
        X, given, n_counts = make_distinct(rng, dicts, version, "symbol", picked, 4, 0.5, None, True)
        exp = reference_tokenize(dicts, version, picked, X, n_counts, "symbol", DEFAULT_SIZE[version])
        fixtures.append(
            to_fixture(f"{v}_symbols", "gene symbols mapped through gene_name_id_dict", version, "symbol",
                       picked, X, given, DEFAULT_SIZE[version], exp, False)
        )

    # 4. ties (V2): genes sharing a median get equal counts
    version = "V2"
    dicts = load_dicts(args.dicts, version)
    tok, med, names, mapping = dicts
    fm = {k: vv for k, vv in mapping.items() if vv in tok}
    by_med = {}
    for k in sorted(tok):
        if k in med and fm.get(k) == k:
            by_med.setdefault(med[k], []).append(k)
    shared = sorted((m for m, ks in by_med.items() if len(ks) >= 6), key=lambda m: -len(by_med[m]))
    tie_genes = [str(g) for g in rng.choice(by_med[shared[0]], size=12, replace=False)]
    tie_genes2 = [str(g) for g in rng.choice(by_med[shared[1]], size=5, replace=False)]
    singles = sorted(k for ks in by_med.values() if len(ks) == 1 for k in ks)
    others = [str(g) for g in rng.choice(singles, size=20, replace=False)]
    ids = tie_genes + tie_genes2 + others
    perm = rng.permutation(len(ids))
    ids = [ids[i] for i in perm]
    col = {g: j for j, g in enumerate(ids)}
    X = np.zeros((3, len(ids)))
    for c in range(3):
        X[c, [col[g] for g in others]] = rng.permutation(np.arange(1, 21)) * 3 + c
        X[c, [col[g] for g in tie_genes[:6]]] = 7 + c
        X[c, [col[g] for g in tie_genes[6:]]] = 11
        X[c, [col[g] for g in tie_genes2]] = 5
    n_counts = X.sum(axis=1) + 1000
    exp = reference_tokenize(dicts, version, ids, X, n_counts, "ensembl", DEFAULT_SIZE[version])
    assert any(len(g) > 1 for cell in exp["tie_groups"] for g in cell)
    fixtures.append(
        to_fixture("v2_ties", "genes sharing a median with equal counts: tie groups compared as sets; tokens "
                   "in scinterp's order (ascending first source column within a tie)", version, "ensembl",
                   ids, X, n_counts, DEFAULT_SIZE[version], exp, True)
    )

    total = 0
    for fx in fixtures:
        path = os.path.join(args.out, fx["name"] + ".json")
        with open(path, "w") as f:
            json.dump(fx, f, separators=(",", ":"))
            f.write("\n")
        size = os.path.getsize(path)
        total += size
        e = fx["expected"]
        print(f"{path}: {size} bytes; kept {len(e['kept_cells'])} dropped {e['dropped_cells']}; "
              f"mapped {e['n_genes_mapped']} unmapped {e['n_genes_unmapped']} targets {e['n_targets']}")
    print(f"total {total} bytes")


if __name__ == "__main__":
    main()
