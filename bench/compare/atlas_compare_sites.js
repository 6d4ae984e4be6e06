// Compares two atlas sites built from the same inputs, one of format 4 and one of format 3, record by record,
// decoding format 4 with the page's own code (export/atlas/atlas.js: expandShard, topCellMeans, hyperUpper):
// top genes, histograms, statistics, cell types and term rows must be equal (term p: the page's tail within
// the 4 stored digits where format 4 leaves it out), top cells' ids and n_active equal and their means within
// s / 510 (plus the 4-digit rounding of format 3's). A one-off check of the format change (BENCHMARKS.md).
//
//     node bench/compare/atlas_compare_sites.js NEW_SITE OLD_SITE export/atlas/atlas.js
const fs = require('fs'), zlib = require('zlib'), path = require('path');
const [newSite, oldSite, pageJs] = process.argv.slice(2);
const src = fs.readFileSync(pageJs, 'utf8');
const grab = (name) => { const i = src.indexOf(name); return src.slice(i, src.indexOf('\n  }\n', i) + 4); };
const stmt = (name) => { const i = src.indexOf(name); return src.slice(i, src.indexOf(';\n', i) + 1); };
eval(stmt('const LANCZOS') + grab('function lnGamma') + stmt('const lnChoose') + grab('function hyperUpper') +
  stmt('const TEN') + stmt('const expanded') + grab('function expandShard') + stmt('const TOP_CELL_LEVELS') + grab('function topCellMeans') +
  '; globalThis.P = {hyperUpper, expandShard, topCellMeans};');
const Z85 = '0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#';
function read(file) {
  const t = fs.readFileSync(file, 'utf8').trim();
  const body = t.slice('atlas.receive('.length, -2); const comma = body.indexOf(',');
  let p = JSON.parse(body.slice(comma + 1));
  if (typeof p === 'string') {
    const pad = +p[1], z = p.slice(3), out = Buffer.alloc(z.length / 5 * 4);
    for (let i = 0; i < z.length / 5; i++) { let v = 0; for (let j = 0; j < 5; j++) v = v * 85 + Z85.indexOf(z[i * 5 + j]); out.writeUInt32BE(v, i * 4); }
    p = JSON.parse(zlib.inflateSync(out.subarray(0, out.length - pad)).toString());
  }
  return p;
}
const canon = (v) => (Array.isArray(v) ? v.map(canon) : v && typeof v === "object" ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, canon(v[k])])) : v);
const eq = (a, b) => JSON.stringify(canon(a)) === JSON.stringify(canon(b));
let recs = 0, bad = 0, worstTc = 0, derivedP = 0, worstP = 0;
const fail = (m) => { if (bad++ < 10) console.log('MISMATCH', m); };
for (const L of fs.readdirSync(path.join(newSite, 'data')).filter((d) => /^L\d+$/.test(d))) {
  const table = read(path.join(newSite, 'data', L, 'features.js')).cols;
  const row = new Map(table.f.map((f, i) => [f, i]));
  for (const file of fs.readdirSync(path.join(newSite, 'data', L)).filter((f) => /^d\d+\.js$/.test(f))) {
    const d = P.expandShard(read(path.join(newSite, 'data', L, file)));
    const o = read(path.join(oldSite, 'data', L, file));
    if (!eq(Object.keys(d).sort(), Object.keys(o).sort())) fail(L + file + ' keys');
    for (const f of Object.keys(o)) {
      const a = d[f], b = o[f]; recs++;
      if (!a) { fail(L + ' ' + f + ' missing'); continue; }
      if (a.g && a.g.it) { a.g.id = table.top[row.get(+f)].slice(0, a.g.it).concat(a.g.id); delete a.g.it; }
      if (!eq(a.g, b.g)) fail(L + ' ' + f + ' g');
      if (!eq(a.h, b.h) || !eq(a.s, b.s) || !eq(a.c, b.c)) fail(L + ' ' + f + ' h/s/c');
      if (b.tc) {
        if (!eq(a.tc.c, b.tc.c) || !eq(a.tc.a, b.tc.a)) fail(L + ' ' + f + ' tc ids');
        const m = P.topCellMeans(a.tc), s = a.tc.s;
        b.tc.m.forEach((x, k) => { const e = Math.abs(m[k] - x) / s; if (e > worstTc) worstTc = e; if (e > 1 / 510 + 5e-4 * x / s) fail(L + ' ' + f + ' tc m ' + k); });
      }
      if (!!a.t !== !!b.t) fail(L + ' ' + f + ' t');
      else if (b.t) b.t.forEach((r, j) => {
        const n = a.t[j];
        if (!eq(n.slice(0, 5), r.slice(0, 5)) || !eq(n.slice(6), r.slice(6))) fail(L + ' ' + f + ' t row ' + j);
        if (n[5] == null) { derivedP++; const p = P.hyperUpper(n[1], n[4], n[3], n[2]); const e = Math.abs(p - r[5]) / r[5]; if (e > worstP) worstP = e; if (e > 5.01e-4) fail(L + ' ' + f + ' p ' + p + ' ' + r[5]); }
        else if (n[5] !== r[5]) fail(L + ' ' + f + ' stored p');
      });
    }
  }
}
console.log({ records: recs, mismatches: bad, worstTopCellErrorOverS: worstTc, termPComputed: derivedP, worstPvsStored4Digits: worstP });
