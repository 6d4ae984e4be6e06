#!/usr/bin/env bash
# Regenerates tests/fixtures/atlas/: the inputs of `scinterp atlas` from a real run of the demo (seeded, so
# the same scinterp gives the same files). The demo catalogues blocks.2; this also catalogues the blocks.1
# and blocks.3 SAEs the demo trained (the edges run blocks.1 → blocks.3) and annotates all three against the
# demo's GMT of planted programs. The co-activation tables and SVD axes are left out (the atlas reads
# neither); the rest is copied as written.
#
#   tests/reference/make_atlas_fixture.sh [path/to/scinterp] [existing demo folder]
set -euo pipefail
cd "$(dirname "$0")/../.."
bin="${1:-target/release/scinterp}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
demo="${2:-$work/demo}"
if [ ! -e "$demo/summary.json" ]; then
    "$bin" --quiet demo --out "$demo"
fi
for b in 1 3; do
    "$bin" --quiet analyze --acts "$demo/acts" --sae "$demo/saes/blocks.$b.hook_resid_post" \
        --out "$work/catalog-b$b" --genes "$demo/genes.tsv" --seed 20261121 --overwrite
done
"$bin" --quiet analyze --acts "$demo/acts" --sae "$demo/sae" --out "$work/catalog-b2" \
    --genes "$demo/genes.tsv" --seed 20261121 --overwrite
"$bin" --quiet annotate --catalog "$work/catalog-b1,$work/catalog-b2,$work/catalog-b3" \
    --gene-sets "$demo/programs.gmt" --out "$work/annotation" --seed 20261121

out=tests/fixtures/atlas
rm -rf "$out"
mkdir -p "$out"
for b in 1 2 3; do
    mkdir -p "$out/catalog-b$b"
    for f in catalog.json features.parquet top_genes.parquet genes.parquet feature_cells.parquet \
        top_cells.parquet modules.parquet; do
        cp "$work/catalog-b$b/$f" "$out/catalog-b$b/"
    done
done
cp -r "$work/annotation" "$out/annotation"
cp -r "$demo/layers" "$out/layers"
cp "$demo/edges.tsv" "$demo/edges.summary.json" "$demo/effects.parquet" "$demo/effects.summary.json" "$out/"
du -sh "$out"
