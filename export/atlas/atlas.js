// scinterp atlas: a static page over the data files that `scinterp atlas` writes. Works from file://: every
// data file is a script that calls atlas.receive(key, payload); payloads "y<pad>:<Z85>" are zlib-compressed JSON,
// inflated with the browser's DecompressionStream. No network, no dependencies.
(function () {
  'use strict';

  // ---------------------------------------------------------------------------------------------------
  // Loading

  // The data layout this page reads (the manifest's format_version; scinterp atlas writes both together).
  const FORMAT_VERSION = 4;
  const pending = new Map(); // key -> {promise, resolve, reject}
  // timings: one entry per rendered route, {route, ms: render time, at: ms since navigation start}.
  const atlas = { ready: false, errors: [], timings: [] };
  window.atlas = atlas;

  function srcOf(key) {
    if (key === 'atlas') return 'data/atlas.js';
    let m = /^L(\d+)\/f$/.exec(key);
    if (m) return 'data/L' + m[1] + '/features.js';
    m = /^L(\d+)\/d(\d+)$/.exec(key);
    if (m) return 'data/L' + m[1] + '/d' + m[2] + '.js';
    return 'data/' + key + '.js';
  }

  const Z85 = '0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#';
  const Z85_VALUE = new Uint8Array(128);
  for (let i = 0; i < Z85.length; i++) Z85_VALUE[Z85.charCodeAt(i)] = i;
  // "y<pad>:<Z85>": zlib bytes padded with pad zero bytes to a multiple of 4 (5 characters per 4 bytes).
  function unz85(text, pad) {
    const n = text.length / 5;
    const bytes = new Uint8Array(n * 4);
    for (let i = 0, o = 0; i < n; i++, o += 4) {
      let v = 0;
      for (let j = 0; j < 5; j++) v = v * 85 + Z85_VALUE[text.charCodeAt(i * 5 + j)];
      bytes[o] = v >>> 24; bytes[o + 1] = (v >>> 16) & 255; bytes[o + 2] = (v >>> 8) & 255; bytes[o + 3] = v & 255;
    }
    return bytes.subarray(0, bytes.length - pad);
  }

  async function decode(payload) {
    if (typeof payload !== 'string') return payload;
    let bytes;
    if (payload.startsWith('z:')) {
      const bin = atob(payload.slice(2));
      bytes = new Uint8Array(bin.length);
      for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    } else if (/^y[0-3]:/.test(payload)) {
      bytes = unz85(payload.slice(3), +payload[1]);
    } else return payload;
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('deflate'));
    return JSON.parse(await new Response(stream).text());
  }

  atlas.receive = function (key, payload) {
    const p = pending.get(key);
    if (!p) return;
    decode(payload).then(p.resolve, p.reject);
  };

  // Loads one data file (once); resolves to its payload.
  function load(key) {
    let p = pending.get(key);
    if (p) return p.promise;
    p = {};
    p.promise = new Promise((resolve, reject) => { p.resolve = resolve; p.reject = reject; });
    pending.set(key, p);
    const s = document.createElement('script');
    s.src = srcOf(key);
    s.async = true;
    s.onerror = () => p.reject(new Error('cannot load ' + s.src + ' (was the site copied whole?)'));
    document.head.appendChild(s);
    return p.promise;
  }
  // Missing optional files (a feature with no detail shard) resolve to null.
  function loadOptional(key) {
    return load(key).catch(() => null);
  }
  atlas.load = load;

  // ---------------------------------------------------------------------------------------------------
  // Definitions of every number shown (also in README: "scinterp atlas").

  const DEF = {
    layers: 'Layers of the atlas: one per catalog (an SAE at one hook), plus hooks that only edges, effects or layer comparisons name.',
    features: 'SAE latents with a row in a catalog\'s features table.',
    d_sae: 'Latents of the SAE (catalog.json d_sae).',
    alive: 'Alive: the feature fired (value > 0) on at least one row (gene position) of the catalog\'s activation store.',
    annotated: 'Annotated: an alive feature with a term or network-edge test at q_value_atlas ≤ alpha (each in its own BH family).',
    annotation_rate: 'Annotated features / alive features of the layer.',
    modules: 'Co-activation modules of the layer: seeded Leiden (RB configuration, PMI weights) over co-activation edges; modules of ≥ min_size features.',
    edges_out: 'Circuit edges whose source feature is in this layer (rows of the edge tables).',
    edges_in: 'Circuit edges whose target feature is in this layer.',
    edge_pair: 'Edges written by the trace from features of the first layer to features of the second (q ≤ max_q and the other filters of the trace).',
    excitatory: 'Edges with mean_change > 0: the target rises when the source is ablated, so the source lowers the target (the published code calls these "excitatory"). Edges with mean_change exactly 0 are in neither column.',
    inhibitory: 'Edges with mean_change < 0: the target falls when the source is ablated, so the source raises the target (the published code calls these "inhibitory"). Edges with mean_change exactly 0 are in neither column.',
    fvu: 'Fraction of variance unexplained by the SAE over every row of the store (catalog.json reconstruction.fvu_all_rows).',
    genes: 'Distinct genes in any feature\'s top-gene lists.',
    terms: 'Distinct (library, term) pairs in the annotation tables (significant in either BH family).',
    n_edges: 'Rows of the edge tables (every edge that passed the trace\'s filters).',
    fire_count: 'Rows (gene positions) of the store where the feature fired (value > 0).',
    fire_freq: 'fire_count / rows of the store.',
    cells_fired: 'Cells with at least one position where the feature fired.',
    mean_activation: 'Mean value over every row of the store, zeros included.',
    mean_when_active: 'Mean value over the rows where the feature fired.',
    q50_when_active: 'Median value where the feature fired (log histogram, within a factor 10^(1/64)).',
    q90_when_active: '90th percentile of the value where the feature fired (log histogram, within a factor 10^(1/64)).',
    q99_when_active: '99th percentile of the value where the feature fired (log histogram, within a factor 10^(1/64)).',
    max_activation: 'Largest value of the feature on any row.',
    decoder_norm: 'Euclidean norm of the feature\'s decoder row.',
    svd_max_abs_cos: 'Largest |cosine| between the feature\'s decoder direction and one of the top principal axes of the activations (SVD on a seeded row sample).',
    svd_projection: 'Norm of the projection of the unit decoder direction onto the subspace of the top principal axes.',
    module: 'Co-activation module id (−1 or blank: in no module).',
    module_size: 'Features in the feature\'s co-activation module.',
    feature: 'Index of the latent in its SAE (0-based).',
    rank: 'Position in the ranking (1 = first).',
    rank_cm: 'Rank of the gene among the feature\'s top genes by conditional mean (1 = first; blank: not in that list).',
    rank_mass: 'Rank of the gene among the feature\'s top genes by mass (1 = first; blank: not in that list).',
    n_fired: 'Positions of this gene where the feature fired.',
    n_positions: 'Positions of this gene in the store.',
    mean_when_fired: 'Mean activation over this gene\'s positions where the feature fired (the conditional_mean ranking\'s score; genes need ≥ min-support such positions).',
    mass: 'Total activation of the feature on this gene\'s positions (the mass ranking\'s score) = mean_when_fired × n_fired.',
    fire_rate: 'n_fired / n_positions: how often the feature fires on this gene.',
    overlap: 'Query genes (the feature\'s top genes) that are in the term.',
    query_size: 'Query genes in the library\'s background (the feature\'s top-n genes by the annotation ranking).',
    term_size: 'Genes of the term in the background.',
    background_size: 'Genes of the library in the catalog\'s background (genes observed at the store\'s positions).',
    p_value: 'One-sided Fisher test: hypergeometric upper tail P[X ≥ overlap] (scipy.stats.hypergeom.sf(overlap − 1, background_size, term_size, query_size)); where the atlas leaves it out (it equals this tail), the page computes it from the row\'s four counts.',
    q_value_atlas: 'Benjamini–Hochberg q within its family over every catalog in the annotation run: term rows in the gene_sets family (every (feature, term) pair), network-edge tests in their own network_edges family (every (feature, network) pair).',
    q_value_catalog: 'Benjamini–Hochberg q over this catalog\'s part of the tests only.',
    fold_enrichment: '(overlap / query_size) / (term_size / background_size).',
    n_sig: 'Significant tests of the feature: terms and network-edge tests at q_value_atlas ≤ alpha.',
    best_q: 'Lowest q_value_atlas over the feature\'s term and network-edge tests.',
    observed_edges: 'Directed (TRRUST) or undirected (PPI) network edges among the feature\'s query genes.',
    null_mean: 'Mean edge count over degree-preserving permutations of the query genes.',
    edge_test_p: 'Permutation p = (1 + #null ≥ observed) / (B + 1).',
    permutations: 'Permutations B of the network-edge null.',
    in_top: 'The feature\'s top cells (the first ⌈10 %⌉ of its active cells by mean activation) with this label.',
    top_size: 'The feature\'s top cells that carry a label.',
    label_cells: 'Labelled cells of the store with this label.',
    n_cells_label: 'Labelled cells of the store.',
    cell_p: 'One-sided Fisher test of the label among the top cells (population: the store\'s labelled cells).',
    cell_q: 'Benjamini–Hochberg q over every (feature, label) pair of the annotation run.',
    cell_rank: 'Rank of the cell among the cells where the feature fired, by mean activation.',
    n_active: 'Positions of the cell where the feature fired.',
    cell_mean: 'Mean activation over the cell\'s positions where the feature fired. Stored rounded: the first top cell\'s (s) to 4 significant digits, every other one to a multiple of s/255 (the nearest), so the value shown is within s/510 of the catalog\'s (before its display to 4 digits).',
    hist: 'Cells whose mean activation (over their positions where the feature fired) falls in this log-spaced bin of the layer\'s range.',
    edge_n: 'Cells in which the source feature fired and was ablated (the observations of the edge).',
    mean_change: 'Mean over cells of the target feature\'s change (ablated − clean run), averaged over the source\'s active positions. Negative: the target falls when the source is removed (the source excites it).',
    cohens_d: 'Effect: mean_change / SD of the change across cells (Cohen\'s d).',
    sign_consistency: 'max(n₊, n₋)/n: the fraction of all n cells whose change has the majority sign. Cells with no change count for neither sign, so they count against it.',
    edge_p: 'One-sample t-test of the per-cell changes against 0.',
    edge_q: 'Benjamini–Hochberg q over every edge test the trace performed.',
    abs_cos: '|cosine| between unit decoder directions of the two features (decoder matching of scinterp layers).',
    source_fires: 'Rows where the source feature fired (highway statistics).',
    cocount: 'Rows where both features fired.',
    pmi: 'log2 PMI of the two features firing on the same rows: log2(P(both) / (P(source) P(target))).',
    npmi: 'PMI normalised by −log2 P(both) (1: always together).',
    pmi_permuted_pairing: 'The same PMI with each row\'s target codes taken from a row of the same gene token in another cell (the within-token null: the shared-token effect stays, so a highway must beat it).',
    highway: '1 when the best target\'s PMI exceeds the highway threshold of scinterp layers.',
    lifespan: 'Layers the feature survives along adjacent decoder matches ≥ the match threshold.',
    alpha_fx: 'Scale of the edit: 0 ablates the feature, > 1 amplifies (steers) it.',
    fx_n_cells: 'Cells where the feature fired and was edited.',
    target_logit_change: 'Mean change of the logit of each position\'s own token over positions whose token is in the readout set.',
    other_logit_change: 'The same mean change over the other positions.',
    target_minus_other: 'target_logit_change − other_logit_change, mean over cells.',
    target_minus_other_p: 'One-sample t-test of target − other across cells.',
    target_minus_other_q: 'Benjamini–Hochberg q over the (feature, α) rows.',
    specificity_ratio: '|target_logit_change| / |other_logit_change|.',
    control_target_minus_other: 'target − other for the same edit along a seeded random direction of the same norm.',
    vs_control: 'Feature − control per cell, mean over cells.',
    vs_control_p: 't-test of feature − control across cells.',
    vs_control_q: 'Benjamini–Hochberg q of vs_control over the (feature, α) rows.',
    direction_change: 'Change of the final state\'s projection on the given direction (--direction).',
    direction_change_p: 't-test of direction_change across cells.',
    control_direction_change: 'direction_change for the random-direction control.',
    n_features_term: 'Features with this term in the annotation tables.',
    consensus_value: 'A value of the consensus table, as written by scinterp consensus (see its README section).',
    map_axis: 'Axis of the 2-D map.',
    feature_count: 'Features listed.',
    module_members: 'Features of the module.',
    seconds: 'Seconds.',
    generic: 'A value of the input file, shown as written.',
  };
  atlas.DEF = DEF;

  // ---------------------------------------------------------------------------------------------------
  // Rendering helpers

  const esc = (s) => String(s == null ? '' : s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));

  function fmt(x) {
    if (x == null || (typeof x === 'number' && !isFinite(x))) return '–';
    if (typeof x !== 'number') return String(x);
    if (Number.isInteger(x) && Math.abs(x) < 1e15) return x.toLocaleString('en-US');
    const a = Math.abs(x);
    if (a !== 0 && (a < 1e-3 || a >= 1e6)) return x.toExponential(2);
    return String(Number(x.toPrecision(4)));
  }
  // A number with its definition on hover.
  function num(x, def) {
    const title = DEF[def] || def;
    return '<span class="num" title="' + esc(title) + '">' + esc(fmt(x)) + '</span>';
  }
  function th(label, def, extra) {
    const t = def ? ' title="' + esc(DEF[def] || def) + '"' : '';
    return '<th' + t + (extra ? ' ' + extra : '') + '>' + esc(label) + '</th>';
  }
  const none = (what) => '<p class="none">none: ' + esc(what) + '</p>';

  function setMain(html) {
    document.getElementById('main').innerHTML = html;
  }
  function fail(err) {
    atlas.errors.push(String(err && err.message || err));
    setMain('<p class="error">' + esc(err && err.message || err) + '</p>');
  }

  let M = null; // the manifest
  const layerName = (l) => (M.layers[l] ? M.layers[l].name : 'layer ' + l);
  const shortName = (l) => {
    const n = layerName(l);
    const m = /blocks\.(\d+)\.hook_(\w+)/.exec(n);
    return m ? 'L' + m[1] + (m[2] === 'resid_post' ? '' : ' ' + m[2]) : n;
  };
  const featLink = (l, f, text) => '<a href="#/feature/' + l + '/' + f + '" title="' + esc(layerName(l) + ', feature ' + f) + '">' + esc(text || shortName(l) + ':' + f) + '</a>';

  async function genes() { return load('genes'); }
  async function terms() { return load('terms'); }
  async function layerTable(l) {
    const t = await load('L' + l + '/f');
    if (!t.index) {
      t.index = new Map();
      t.cols.f.forEach((f, i) => t.index.set(f, i));
      t.n = t.cols.f.length;
    }
    return t;
  }
  // A detail shard stores some record parts column-wise over its features (manifest columns.detail_shard_columns):
  // each of _g (top genes), _tc (top cells), _h (histograms), _t (term rows), _c (cell types) holds f (the
  // features) and n (each one's rows), then its columns one feature after another: _g: nf, m (n each), id
  // (n − it each) and e and it (one); _tc: c, a (n each), s (one), q (n − 1 each); _h: h (n each); _t: t0 … t{L−1} (n each; row j =
  // [t0[j], t1[j], …]); _c: l, k, q (n each) and t (one). They go back into the records once, on loading. The
  // top genes' m are integers of 10^e, the first and then the steps down from the row before: n / 10^−e
  // (correctly rounded, with 10^k read from its decimal text) is the stored 4-digit value.
  const TEN = (k) => Number('1e' + k);
  const expanded = new WeakSet();
  function expandShard(d) {
    if (expanded.has(d)) return d;
    expanded.add(d);
    for (const [key, name] of [['_g', 'g'], ['_tc', 'tc'], ['_h', 'h'], ['_t', 't'], ['_c', 'c']]) {
      const cols = d[key];
      if (!cols) continue;
      delete d[key];
      const rowCols = [];
      if (name === 't') for (let c = 0; cols['t' + c]; c++) rowCols.push(cols['t' + c]);
      let at = 0, atQ = 0, atId = 0;
      cols.f.forEach((f, j) => {
        const n = cols.n[j];
        const rec = d[String(f)] || (d[String(f)] = {});
        const rows = (c) => cols[c].slice(at, at + n);
        if (name === 'h') rec.h = rows('h');
        else if (name === 't') rec.t = Array.from({ length: n }, (_, r) => rowCols.map((c) => c[at + r]));
        else if (name === 'c') rec.c = { l: rows('l'), k: rows('k'), q: rows('q'), t: cols.t[j] };
        else if (name === 'tc') { rec.tc = { c: rows('c'), a: rows('a'), s: cols.s[j], q: cols.q.slice(atQ, atQ + n - 1) }; atQ += n - 1; }
        else {
          const e = cols.e[j];
          let v = 0;
          const m = rows('m').map((x, k) => { v = k === 0 ? x : v - x; return e < 0 ? v / TEN(-e) : v * TEN(e); });
          const it = cols.it ? cols.it[j] : 0;
          rec.g = { id: cols.id.slice(atId, atId + n - it), nf: rows('nf'), m };
          if (it) rec.g.it = it;
          atId += n - it;
        }
        at += n;
      });
    }
    return d;
  }
  async function detail(l, f) {
    const d = await loadOptional('L' + l + '/d' + Math.floor(f / M.shard));
    return (d && expandShard(d)[String(f)]) || {};
  }
  function geneLabel(G, g) {
    return G.symbol[g] || G.gene_id[g] || ('gene ' + g);
  }
  // The feature's distinct top-gene rows, [gene, n_fired, mean_when_fired, n_positions], from the
  // column-wise record (np absent or null: the gene's n_positions in genes.js); null without top genes.
  function geneRows(d, G) {
    if (!d.g) return null;
    if (!d.g.rows) {
      d.g.rows = d.g.id.map((g, k) => [g, d.g.nf[k], d.g.m[k], d.g.np && d.g.np[k] != null ? d.g.np[k] : (G && G.n_positions ? G.n_positions[g] : null)]);
    }
    return d.g.rows;
  }
  // The histogram's 20 counts from [first bin, counts …].
  function histCounts(h, range) {
    const counts = new Array(range ? range[2] : h.length - 1).fill(0);
    for (let k = 1; k < h.length; k++) counts[h[0] + k - 1] = h[k];
    return counts;
  }
  // A term's overlap genes: indices of the feature's top-gene rows, or a comma list of names.
  function overlapGenes(G, rows, v) {
    if (Array.isArray(v)) return v.map((k) => (rows && rows[k] ? geneLabel(G, rows[k][0]) : '?'));
    return String(v || '').split(',').filter(Boolean);
  }
  function termLabel(T, t) {
    return t == null || t < 0 ? '' : T.name[t];
  }
  function geneLink(G, g) {
    const s = geneLabel(G, g);
    return '<a href="#/gene/' + encodeURIComponent(s) + '" title="' + esc(G.gene_id[g] || s) + '">' + esc(s) + '</a>';
  }
  function termLink(T, t) {
    return '<a href="#/term/=' + t + '" title="' + esc(M.libraries[T.library[t]] + ': ' + T.name[t]) + '">' + esc(T.name[t]) + '</a>';
  }

  // A sortable table: columns [{label, def, key(row) -> value for sorting, html(row)}].
  function sortableTable(id, columns, rows, opts) {
    opts = opts || {};
    const state = { col: opts.sortCol == null ? -1 : opts.sortCol, dir: opts.sortDir || 1, shown: opts.page || 200 };
    function render() {
      const el = document.getElementById(id);
      if (!el) return;
      let sorted = rows;
      if (state.col >= 0) {
        const k = columns[state.col].key;
        sorted = rows.slice().sort((a, b) => {
          const x = k(a), y = k(b);
          const xn = x == null || (typeof x === 'number' && isNaN(x)), yn = y == null || (typeof y === 'number' && isNaN(y));
          if (xn || yn) return xn === yn ? 0 : xn ? 1 : -1;
          return (x < y ? -1 : x > y ? 1 : 0) * state.dir;
        });
      }
      const head = '<tr>' + columns.map((c, i) => th(c.label, c.def, 'class="sortable' + (c.num ? ' n' : '') + (i === state.col ? (state.dir > 0 ? ' sorted-asc' : ' sorted-desc') : '') + '" data-col="' + i + '"')).join('') + '</tr>';
      const body = sorted.slice(0, state.shown).map((r) => '<tr' + (opts.rowAttr ? ' ' + opts.rowAttr(r) : '') + '>' + columns.map((c) => '<td' + (c.num ? ' class="n"' : '') + '>' + c.html(r) + '</td>').join('') + '</tr>').join('');
      const more = sorted.length > state.shown ? '<div class="more"><button data-more="1">Show more (' + fmt(sorted.length - state.shown) + ' left)</button></div>' : '';
      el.innerHTML = '<table id="' + id + '-table"><thead>' + head + '</thead><tbody>' + body + '</tbody></table>' + more;
      el.querySelectorAll('th.sortable').forEach((h) => h.addEventListener('click', () => {
        const c = +h.dataset.col;
        state.dir = state.col === c ? -state.dir : (columns[c].num ? -1 : 1);
        state.col = c;
        render();
      }));
      const b = el.querySelector('button[data-more]');
      if (b) b.addEventListener('click', () => { state.shown += opts.page || 200; render(); });
    }
    return { render, setRows(r) { rows = r; render(); } };
  }

  function kvTable(pairs) {
    return '<table class="kv">' + pairs.map(([k, v, def]) => '<tr><td' + (def ? ' title="' + esc(DEF[def] || def) + '"' : '') + '>' + esc(k) + '</td><td class="n">' + (def ? num(v, def) : esc(fmt(v))) + '</td></tr>').join('') + '</table>';
  }

  // ---------------------------------------------------------------------------------------------------
  // Charts (SVG)

  function barChart(values, labels, opts) {
    const w = opts.width || 640, h = opts.height || 180, pad = 32, n = values.length;
    const max = Math.max(1e-12, ...values.flat().filter((v) => v != null && isFinite(v)));
    const bw = (w - pad * 2) / Math.max(1, n);
    let s = '<svg class="chart" viewBox="0 0 ' + w + ' ' + (h + 34) + '" width="100%" style="max-width:' + w + 'px" role="img" aria-label="' + esc(opts.title || '') + '">';
    s += '<text x="' + pad + '" y="14">' + esc(opts.title || '') + '</text>';
    for (let i = 0; i < n; i++) {
      const series = Array.isArray(values[i]) ? values[i] : [values[i]];
      series.forEach((v, k) => {
        if (v == null || !isFinite(v)) return;
        const bh = (v / max) * (h - 30);
        const x = pad + i * bw + 2 + k * 3, y = h - bh;
        s += '<rect class="' + (opts.classes ? opts.classes[k] : 'bar-ann') + '" x="' + x.toFixed(1) + '" y="' + y.toFixed(1) + '" width="' + Math.max(1, bw - 4 - (series.length - 1) * 3).toFixed(1) + '" height="' + bh.toFixed(1) + '"><title>' + esc(labels[i] + ': ' + (opts.names ? opts.names[k] + ' ' : '') + fmt(v) + ' — ' + (DEF[opts.defs ? opts.defs[k] : ''] || '')) + '</title></rect>';
      });
      if (n <= 40 || i % Math.ceil(n / 40) === 0) s += '<text x="' + (pad + i * bw + bw / 2).toFixed(1) + '" y="' + (h + 14) + '" text-anchor="middle">' + esc(labels[i]) + '</text>';
    }
    s += '<text x="4" y="' + (h - (h - 30)) + '">' + esc(fmt(max)) + '</text><text x="4" y="' + h + '">0</text></svg>';
    return s;
  }

  function lineChart(values, labels, opts) {
    const w = opts.width || 640, h = opts.height || 160, pad = 36, n = values.length;
    const max = opts.max || Math.max(1e-12, ...values.filter((v) => v != null && isFinite(v)));
    const x = (i) => pad + (n <= 1 ? (w - 2 * pad) / 2 : (i * (w - 2 * pad)) / (n - 1));
    const y = (v) => h - 10 - (v / max) * (h - 40);
    let s = '<svg class="chart" viewBox="0 0 ' + w + ' ' + (h + 24) + '" width="100%" style="max-width:' + w + 'px" role="img" aria-label="' + esc(opts.title || '') + '"><text x="' + pad + '" y="14">' + esc(opts.title || '') + '</text>';
    const pts = values.map((v, i) => (v == null || !isFinite(v) ? null : [x(i), y(v)])).filter(Boolean);
    if (pts.length) s += '<polyline class="line-rate" points="' + pts.map((p) => p[0].toFixed(1) + ',' + p[1].toFixed(1)).join(' ') + '"/>';
    values.forEach((v, i) => {
      if (v == null || !isFinite(v)) return;
      s += '<circle cx="' + x(i).toFixed(1) + '" cy="' + y(v).toFixed(1) + '" r="4" fill="#2a9d8f"><title>' + esc(labels[i] + ': ' + fmt(v) + ' — ' + (DEF[opts.def] || '')) + '</title></circle>';
      if (n <= 40 || i % Math.ceil(n / 40) === 0) s += '<text x="' + x(i).toFixed(1) + '" y="' + (h + 12) + '" text-anchor="middle">' + esc(labels[i]) + '</text>';
    });
    s += '<text x="2" y="' + (y(max) + 4) + '">' + esc(fmt(max)) + '</text><text x="2" y="' + (y(0) + 4) + '">0</text></svg>';
    return s;
  }

  // ---------------------------------------------------------------------------------------------------
  // Overview

  async function viewOverview() {
    const L = M.layers;
    const sum = (k) => L.reduce((a, l) => a + (l[k] || 0), 0);
    const withCat = L.filter((l) => l.catalog);
    const nEdges = M.edge_pairs.reduce((a, p) => a + p[2], 0);
    let h = '<h1>' + esc(M.title) + '</h1><div class="cards">';
    const card = (v, label, def) => '<div class="card"><span class="big">' + num(v, def) + '</span><span class="label" title="' + esc(DEF[def]) + '">' + esc(label) + '</span></div>';
    h += card(L.length, 'layers', 'layers') + card(withCat.reduce((a, l) => a + l.rows, 0), 'features', 'features') + card(sum('alive'), 'alive', 'alive') + card(sum('annotated'), 'annotated', 'annotated') + card(nEdges, 'circuit edges', 'n_edges') + card(M.genes, 'genes', 'genes') + card(M.terms, 'terms', 'terms');
    h += '</div>';
    const labels = L.map((l, i) => shortName(i));
    if (withCat.length) {
      h += '<div class="grid2"><div>' + barChart(L.map((l) => [l.alive, l.annotated]), labels, { title: 'Alive (grey) and annotated (green) features per layer', classes: ['bar-alive', 'bar-ann'], names: ['alive', 'annotated'], defs: ['alive', 'annotated'] }) + '</div>';
      h += '<div>' + lineChart(L.map((l) => (l.catalog && l.alive ? l.annotated / l.alive : null)), labels, { title: 'Annotation rate across layers', def: 'annotation_rate' }) + '</div>';
      h += '<div>' + barChart(L.map((l) => (l.catalog ? l.modules : null)), labels, { title: 'Co-activation modules per layer', classes: ['bar-mod'], defs: ['modules'] }) + '</div>';
      h += '<div>' + barChart(L.map((l) => [l.edges_out, l.edges_in]), labels, { title: 'Circuit edges out of (grey) and into (green) each layer', classes: ['bar-alive', 'bar-ann'], names: ['out', 'in'], defs: ['edges_out', 'edges_in'] }) + '</div></div>';
    }
    h += '<h2>Layers</h2><div id="ov-layers"></div>';
    h += '<h2>Circuit edges between layers</h2>';
    h += M.edge_pairs.length
      ? '<table><tr>' + th('from', 'layers') + th('to', 'layers') + th('edges', 'edge_pair', 'class="n"') + th('source lowers target (mean change > 0)', 'excitatory', 'class="n"') + th('source raises target (mean change < 0)', 'inhibitory', 'class="n"') + '</tr>' + M.edge_pairs.map((p) => '<tr><td>' + esc(layerName(p[0])) + '</td><td>' + esc(layerName(p[1])) + '</td><td class="n">' + num(p[2], 'edge_pair') + '</td><td class="n">' + num(p[3], 'excitatory') + '</td><td class="n">' + num(p[4], 'inhibitory') + '</td></tr>').join('') + '</table>'
      : none('no edge table was given (--edges)');
    h += '<h2>Inputs</h2><ul>' + L.filter((l) => l.catalog).map((l) => '<li>catalog <code>' + esc(l.catalog) + '</code></li>').join('') + M.annotations.map((a) => '<li>annotation <code>' + esc(a.path) + '</code> (alpha ' + num(a.alpha, 'q_value_atlas') + ')</li>').join('') + M.edges.map((e) => '<li>edges <code>' + esc(e.path) + '</code> (' + num(e.rows, 'n_edges') + ' rows)</li>').join('') + M.effects.map((e) => '<li>effects <code>' + esc(e.path) + '</code></li>').join('') + M.layer_comparisons.map((e) => '<li>layer comparison <code>' + esc(e.path) + '</code></li>').join('') + '</ul>';
    setMain(h);
    sortableTable('ov-layers', [
      { label: 'layer', key: (r) => r.id, html: (r) => '<a href="#/layer/' + r.id + '">' + esc(r.name) + '</a>' + (r.catalog ? '' : ' <span class="muted">(no catalog)</span>') },
      { label: 'd_sae', def: 'd_sae', num: 1, key: (r) => r.d_sae, html: (r) => num(r.d_sae, 'd_sae') },
      { label: 'alive', def: 'alive', num: 1, key: (r) => r.alive, html: (r) => num(r.catalog ? r.alive : null, 'alive') },
      { label: 'annotated', def: 'annotated', num: 1, key: (r) => r.annotated, html: (r) => num(r.catalog ? r.annotated : null, 'annotated') },
      { label: 'rate', def: 'annotation_rate', num: 1, key: (r) => (r.alive ? r.annotated / r.alive : null), html: (r) => num(r.alive ? r.annotated / r.alive : null, 'annotation_rate') },
      { label: 'modules', def: 'modules', num: 1, key: (r) => r.modules, html: (r) => (r.catalog ? '<a href="#/modules/' + r.id + '">' + num(r.modules, 'modules') + '</a>' : num(null, 'modules')) },
      { label: 'edges out', def: 'edges_out', num: 1, key: (r) => r.edges_out, html: (r) => num(r.edges_out, 'edges_out') },
      { label: 'edges in', def: 'edges_in', num: 1, key: (r) => r.edges_in, html: (r) => num(r.edges_in, 'edges_in') },
      { label: 'FVU', def: 'fvu', num: 1, key: (r) => r.summary && r.summary.fvu, html: (r) => num(r.summary ? r.summary.fvu : null, 'fvu') },
    ], M.layers, { sortCol: 0, sortDir: 1 }).render();
  }

  function viewLayers() {
    setMain('<h1>Layers</h1><ul>' + M.layers.map((l, i) => '<li><a href="#/layer/' + i + '">' + esc(l.name) + '</a> ' + (l.catalog ? num(l.alive, 'alive') + ' alive, ' + num(l.annotated, 'annotated') + ' annotated' : '<span class="muted">no catalog</span>') + '</li>').join('') + '</ul>');
  }

  // ---------------------------------------------------------------------------------------------------
  // Layer explorer: the feature table (sort, filters) and the 2-D map.

  const MAP_AXES = {
    log_fire_freq: { label: 'log10 fire frequency', def: 'fire_freq', get: (c, i) => (c.fire_freq && c.fire_freq[i] > 0 ? Math.log10(c.fire_freq[i]) : null) },
    log_fire_count: { label: 'log10 fire count', def: 'fire_count', get: (c, i) => (c.fire_count && c.fire_count[i] > 0 ? Math.log10(c.fire_count[i]) : null) },
    mean_when_active: { label: 'mean when active', def: 'mean_when_active', get: (c, i) => (c.mean_when_active ? c.mean_when_active[i] : null) },
    max_activation: { label: 'max activation', def: 'max_activation', get: (c, i) => (c.max_activation ? c.max_activation[i] : null) },
    neg_log_q: { label: '−log10 best q', def: 'best_q', get: (c, i) => (c.bq[i] != null && c.bq[i] > 0 ? -Math.log10(c.bq[i]) : c.bq[i] === 0 ? 300 : 0) },
    n_sig: { label: 'significant tests', def: 'n_sig', get: (c, i) => c.nt[i] },
    edges_out: { label: 'edges out', def: 'edges_out', get: (c, i) => c.out[i] },
    edges_in: { label: 'edges in', def: 'edges_in', get: (c, i) => c.in[i] },
    svd_max_abs_cos: { label: 'SVD max |cos|', def: 'svd_max_abs_cos', get: (c, i) => (c.svd_max_abs_cos ? c.svd_max_abs_cos[i] : null) },
  };

  // Module layout: modules as discs on a sunflower spiral (largest first), members on a spiral inside.
  function moduleLayout(c, n) {
    const pos = new Array(n);
    const byModule = new Map();
    for (let i = 0; i < n; i++) {
      const m = c.module ? c.module[i] : -1;
      if (!byModule.has(m)) byModule.set(m, []);
      byModule.get(m).push(i);
    }
    const mods = [...byModule.entries()].filter(([m]) => m >= 0).sort((a, b) => b[1].length - a[1].length);
    const golden = Math.PI * (3 - Math.sqrt(5));
    let k = 0;
    mods.forEach(([, members]) => {
      const r = Math.sqrt(k + members.length / 2) * 1.1;
      const cx = r * Math.cos(k * golden * 7), cy = r * Math.sin(k * golden * 7);
      k += members.length;
      members.forEach((i, j) => {
        const rr = 0.5 * Math.sqrt(j + 0.5) / Math.sqrt(members.length) * Math.sqrt(members.length) * 0.35;
        pos[i] = [cx + rr * Math.cos(j * golden), cy + rr * Math.sin(j * golden)];
      });
    });
    const rest = byModule.get(-1) || [];
    const r0 = Math.sqrt(k) * 1.1 + 2;
    rest.forEach((i, j) => {
      const r = r0 + Math.sqrt(j) * 0.35;
      pos[i] = [r * Math.cos(j * golden), r * Math.sin(j * golden)];
    });
    return pos;
  }

  async function viewLayer(l) {
    const meta = M.layers[l];
    if (!meta) return fail('no layer ' + l);
    const [t, G, T] = await Promise.all([layerTable(l), genes(), terms()]);
    const c = t.cols;
    const n = t.n;
    const hasCat = !!c.alive;
    const modules = hasCat ? [...new Set(c.module.filter((m) => m >= 0))].sort((a, b) => a - b) : [];
    let h = '<h1>' + esc(meta.name) + '</h1>';
    h += '<p>' + (hasCat ? num(meta.alive, 'alive') + ' alive of ' + num(meta.rows, 'features') + ' features; ' + num(meta.annotated, 'annotated') + ' annotated; ' + num(meta.modules, 'modules') + ' modules (<a href="#/modules/' + l + '">list</a>); ' : '<span class="muted">No catalog for this layer: its features are those the edges, effects or layer comparisons name.</span> ') + num(meta.edges_out, 'edges_out') + ' edges out, ' + num(meta.edges_in, 'edges_in') + ' in. Catalog: <code>' + esc(meta.catalog || 'none') + '</code></p>';
    h += '<div class="filters" id="flt">' +
      '<label title="Feature index, a gene symbol among its top genes, or words of its best term">search <input type="text" id="f-text"></label>' +
      (hasCat ? '<label title="' + esc(DEF.alive) + '"><input type="checkbox" id="f-alive" checked> alive only</label>' : '') +
      '<label title="' + esc(DEF.annotated) + '"><input type="checkbox" id="f-ann"> annotated only</label>' +
      '<label title="' + esc(DEF.edges_out) + '"><input type="checkbox" id="f-edges"> with circuit edges</label>' +
      (modules.length ? '<label title="' + esc(DEF.module) + '">module <select id="f-mod"><option value="">any</option>' + modules.map((m) => '<option>' + m + '</option>').join('') + '</select></label>' : '') +
      (c.fire_freq ? '<label title="' + esc(DEF.fire_freq) + '">fire freq ≥ <input type="number" id="f-freq" step="any" min="0"></label>' : '') +
      '<span id="f-count" class="muted"></span></div>';
    const axes = Object.keys(MAP_AXES).filter((k) => { const a = MAP_AXES[k]; for (let i = 0; i < n; i++) if (a.get(c, i) != null) return true; return false; });
    const axisSelect = (id, sel) => '<select id="' + id + '">' + (hasCat && c.module ? '<option value="modules"' + (sel === 'modules' ? ' selected' : '') + '>module layout</option>' : '') + axes.map((k) => '<option value="' + k + '"' + (k === sel ? ' selected' : '') + '>' + esc(MAP_AXES[k].label) + '</option>').join('') + '</select>';
    const defX = hasCat && c.module ? 'modules' : axes[0] || 'edges_out';
    h += '<h2>Map</h2><div class="filters">x ' + axisSelect('m-x', defX) + ' y ' + axisSelect('m-y', axes.includes('mean_when_active') ? 'mean_when_active' : axes[1] || axes[0]) + '<span class="legend"><span><i class="sw" style="background:#2a9d8f"></i>annotated</span><span><i class="sw" style="background:#6c7a96"></i>not annotated</span><span><i class="sw" style="background:#b8bec9"></i>dead</span></span><span class="muted">(module layout: each disc is a co-activation module; x/y ignored except the choice)</span></div>';
    h += '<div class="map-wrap"><canvas class="map" id="map" width="900" height="520"></canvas></div>';
    h += '<h2>Features</h2><div id="ftable"></div>';
    setMain(h);

    const rows = [];
    for (let i = 0; i < n; i++) rows.push(i);
    const label = (i) => termLabel(T, c.bt[i]);
    const annotated = (i) => c.nt[i] > 0;
    const topGenes = (i) => (c.top ? c.top[i].map((g) => geneLabel(G, g)) : []);
    const cols = [
      { label: 'feature', def: 'feature', num: 1, key: (i) => c.f[i], html: (i) => featLink(l, c.f[i], String(c.f[i])) },
      { label: 'top genes', def: 'mean_when_fired', key: (i) => topGenes(i).join(' '), html: (i) => '<span class="genes-inline">' + (c.top ? c.top[i].map((g) => geneLink(G, g)).join(' ') : '') + '</span>' },
      { label: 'best term', def: 'p_value', key: (i) => label(i), html: (i) => (c.bt[i] >= 0 ? termLink(T, c.bt[i]) : '') },
      { label: 'sig. tests', def: 'n_sig', num: 1, key: (i) => c.nt[i], html: (i) => num(c.nt[i], 'n_sig') },
      { label: 'best q', def: 'best_q', num: 1, key: (i) => c.bq[i], html: (i) => num(c.bq[i], 'best_q') },
    ];
    if (c.fire_freq) cols.push({ label: 'fire freq', def: 'fire_freq', num: 1, key: (i) => c.fire_freq[i], html: (i) => num(c.fire_freq[i], 'fire_freq') });
    if (c.mean_when_active) cols.push({ label: 'mean when active', def: 'mean_when_active', num: 1, key: (i) => c.mean_when_active[i], html: (i) => num(c.mean_when_active[i], 'mean_when_active') });
    if (c.fire_count && !c.fire_freq) cols.push({ label: 'fire count', def: 'fire_count', num: 1, key: (i) => c.fire_count[i], html: (i) => num(c.fire_count[i], 'fire_count') });
    if (c.module) cols.push({ label: 'module', def: 'module', num: 1, key: (i) => c.module[i], html: (i) => (c.module[i] >= 0 ? num(c.module[i], 'module') : '') });
    if (c.ct) cols.push({ label: 'cell type', def: 'cell_q', key: (i) => (c.ct[i] >= 0 ? M.labels[c.ct[i]] : ''), html: (i) => (c.ct[i] >= 0 ? esc(M.labels[c.ct[i]]) : '') });
    cols.push({ label: 'out', def: 'edges_out', num: 1, key: (i) => c.out[i], html: (i) => num(c.out[i], 'edges_out') });
    cols.push({ label: 'in', def: 'edges_in', num: 1, key: (i) => c.in[i], html: (i) => num(c.in[i], 'edges_in') });
    if (c.ls) cols.push({ label: 'lifespan', def: 'lifespan', num: 1, key: (i) => c.ls[i], html: (i) => num(c.ls[i], 'lifespan') });
    const table = sortableTable('ftable', cols, rows, { sortCol: 3, sortDir: -1, rowAttr: (i) => 'data-feature="' + c.f[i] + '"' });

    const $ = (id) => document.getElementById(id);
    let filtered = rows;
    function applyFilters() {
      const text = ($('f-text').value || '').trim().toLowerCase();
      const aliveOnly = $('f-alive') && $('f-alive').checked;
      const annOnly = $('f-ann').checked, edgesOnly = $('f-edges').checked;
      const mod = $('f-mod') ? $('f-mod').value : '';
      const freq = $('f-freq') ? parseFloat($('f-freq').value) : NaN;
      filtered = rows.filter((i) => {
        if (aliveOnly && !c.alive[i]) return false;
        if (annOnly && !annotated(i)) return false;
        if (edgesOnly && !(c.out[i] + c.in[i])) return false;
        if (mod !== '' && String(c.module[i]) !== mod) return false;
        if (!isNaN(freq) && !(c.fire_freq[i] >= freq)) return false;
        if (text) {
          if (String(c.f[i]) === text) return true;
          const hay = topGenes(i).join(' ').toLowerCase() + ' ' + label(i).toLowerCase();
          return hay.includes(text);
        }
        return true;
      });
      $('f-count').textContent = filtered.length + ' of ' + n + ' features';
      $('f-count').title = DEF.feature_count;
      table.setRows(filtered);
      drawMap();
    }
    // The map.
    const canvas = $('map');
    let pts = [];
    let layout = null;
    function drawMap() {
      const ctx = canvas.getContext('2d');
      const W = canvas.width, H = canvas.height, pad = 30;
      ctx.clearRect(0, 0, W, H);
      const xk = $('m-x').value, yk = $('m-y').value;
      let xy;
      if (xk === 'modules' || yk === 'modules') {
        layout = layout || moduleLayout(c, n);
        xy = (i) => layout[i];
      } else {
        const ax = MAP_AXES[xk], ay = MAP_AXES[yk];
        xy = (i) => { const x = ax.get(c, i), y = ay.get(c, i); return x == null || y == null || !isFinite(x) || !isFinite(y) ? null : [x, y]; };
      }
      const raw = filtered.map((i) => [i, xy(i)]).filter((p) => p[1]);
      if (!raw.length) { ctx.fillStyle = '#5b6475'; ctx.fillText('no features to show', 20, 30); pts = []; return; }
      let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
      raw.forEach(([, p]) => { x0 = Math.min(x0, p[0]); x1 = Math.max(x1, p[0]); y0 = Math.min(y0, p[1]); y1 = Math.max(y1, p[1]); });
      if (x1 === x0) { x0 -= 1; x1 += 1; }
      if (y1 === y0) { y0 -= 1; y1 += 1; }
      // Deterministic jitter keeps integer-valued axes readable.
      const jit = (i, k) => (((Math.sin(i * 12.9898 + k * 78.233) * 43758.5453) % 1) - 0.5) * 0.004;
      pts = raw.map(([i, p]) => [i, pad + ((p[0] - x0) / (x1 - x0) + jit(i, 1)) * (W - 2 * pad), H - pad - ((p[1] - y0) / (y1 - y0) + jit(i, 2)) * (H - 2 * pad)]);
      const r = pts.length > 3000 ? 1.6 : pts.length > 800 ? 2.4 : 3.5;
      pts.forEach(([i, x, y]) => {
        ctx.fillStyle = hasCat && !c.alive[i] ? '#b8bec9' : annotated(i) ? '#2a9d8f' : '#6c7a96';
        ctx.beginPath(); ctx.arc(x, y, r, 0, 6.2832); ctx.fill();
      });
      ctx.fillStyle = '#5b6475'; ctx.font = '11px sans-serif';
      if (xk !== 'modules' && yk !== 'modules') {
        ctx.fillText(MAP_AXES[xk].label + ' (' + fmt(x0) + ' … ' + fmt(x1) + ')', pad, H - 8);
        ctx.save(); ctx.translate(12, H - pad); ctx.rotate(-Math.PI / 2); ctx.fillText(MAP_AXES[yk].label + ' (' + fmt(y0) + ' … ' + fmt(y1) + ')', 0, 0); ctx.restore();
      }
    }
    function nearest(ev) {
      const rect = canvas.getBoundingClientRect();
      const mx = (ev.clientX - rect.left) * (canvas.width / rect.width), my = (ev.clientY - rect.top) * (canvas.height / rect.height);
      let best = null, bd = 64;
      for (const p of pts) { const d = (p[1] - mx) ** 2 + (p[2] - my) ** 2; if (d < bd) { bd = d; best = p[0]; } }
      return best;
    }
    const tip = $('tip');
    canvas.addEventListener('mousemove', (ev) => {
      const i = nearest(ev);
      if (i == null) { tip.hidden = true; return; }
      tip.hidden = false;
      tip.style.left = ev.clientX + 12 + 'px'; tip.style.top = ev.clientY + 12 + 'px';
      tip.textContent = 'feature ' + c.f[i] + (c.top ? ' · ' + topGenes(i).join(', ') : '') + (c.bt[i] >= 0 ? ' · ' + label(i) : '');
    });
    canvas.addEventListener('mouseleave', () => { tip.hidden = true; });
    canvas.addEventListener('click', (ev) => { const i = nearest(ev); if (i != null) location.hash = '#/feature/' + l + '/' + c.f[i]; });
    ['f-text', 'f-alive', 'f-ann', 'f-edges', 'f-mod', 'f-freq'].forEach((id) => { const e = $(id); if (e) e.addEventListener('input', applyFilters); });
    ['m-x', 'm-y'].forEach((id) => $(id).addEventListener('change', drawMap));
    applyFilters();
  }

  // ---------------------------------------------------------------------------------------------------
  // Modules

  async function viewModules(l) {
    const meta = M.layers[l];
    const [t, G, T] = await Promise.all([layerTable(l), genes(), terms()]);
    const c = t.cols;
    if (!c.module) return setMain('<h1>Modules of ' + esc(meta.name) + '</h1>' + none('this layer has no catalog'));
    const mods = new Map();
    for (let i = 0; i < t.n; i++) if (c.module[i] >= 0) { if (!mods.has(c.module[i])) mods.set(c.module[i], []); mods.get(c.module[i]).push(i); }
    const rows = [...mods.entries()].map(([m, members]) => {
      const counts = new Map();
      members.forEach((i) => { if (c.bt[i] >= 0) counts.set(c.bt[i], (counts.get(c.bt[i]) || 0) + 1); });
      const top = [...counts.entries()].sort((a, b) => b[1] - a[1]).slice(0, 3);
      return { m, members, top, ann: members.filter((i) => c.nt[i] > 0).length };
    });
    setMain('<h1>Co-activation modules of ' + esc(meta.name) + '</h1><p>' + num(rows.length, 'modules') + ' modules.</p><div id="mods"></div>');
    sortableTable('mods', [
      { label: 'module', def: 'module', num: 1, key: (r) => r.m, html: (r) => num(r.m, 'module') },
      { label: 'size', def: 'module_size', num: 1, key: (r) => r.members.length, html: (r) => num(r.members.length, 'module_size') },
      { label: 'annotated', def: 'annotated', num: 1, key: (r) => r.ann, html: (r) => num(r.ann, 'annotated') },
      { label: 'most common best terms', def: 'p_value', key: (r) => (r.top[0] ? T.name[r.top[0][0]] : ''), html: (r) => r.top.map(([tt, k]) => termLink(T, tt) + ' (' + num(k, 'feature_count') + ')').join(', ') },
      { label: 'members', def: 'module_members', key: (r) => r.members.length, html: (r) => r.members.slice(0, 30).map((i) => featLink(l, c.f[i], String(c.f[i]))).join(' ') + (r.members.length > 30 ? ' …' : '') },
    ], rows, { sortCol: 1, sortDir: -1 }).render();
  }

  // ---------------------------------------------------------------------------------------------------
  // Feature page

  function histogram(counts, range) {
    const w = 420, h = 120, pad = 26, n = counts.length;
    const max = Math.max(1, ...counts);
    const [lo, hi] = range || [null, null];
    const edge = (k) => (lo > 0 && hi > 0 ? Math.pow(10, Math.log10(lo) + (k / n) * (Math.log10(hi) - Math.log10(lo))) : null);
    let s = '<svg class="chart" id="hist" width="' + w + '" height="' + (h + 26) + '" role="img" aria-label="histogram">';
    const bw = (w - 2 * pad) / n;
    counts.forEach((v, k) => {
      const bh = (v / max) * (h - 16);
      s += '<rect class="bar-ann" x="' + (pad + k * bw).toFixed(1) + '" y="' + (h - bh).toFixed(1) + '" width="' + Math.max(1, bw - 1).toFixed(1) + '" height="' + bh.toFixed(1) + '"><title>' + esc(fmt(edge(k)) + ' – ' + fmt(edge(k + 1)) + ': ' + v + ' cells — ' + DEF.hist) + '</title></rect>';
    });
    s += '<text x="' + pad + '" y="' + (h + 14) + '">' + esc(fmt(lo)) + '</text><text x="' + (w - pad) + '" y="' + (h + 14) + '" text-anchor="end">' + esc(fmt(hi)) + ' (log scale)</text><text x="2" y="12">' + max + '</text></svg>';
    return s;
  }

  function edgeTable(id, list, G, tables, upstream) {
    if (!list || !list.length) return none(upstream ? 'no upstream edges in the edge tables' : 'no downstream edges in the edge tables');
    const name = (e) => {
      const t = tables[e[0]];
      if (!t || !t.cols.top) return '';
      const i = t.index.get(e[1]);
      return i == null ? '' : t.cols.top[i].map((g) => geneLabel(G, g)).join(' ');
    };
    return '<table id="' + id + '"><tr>' + th(upstream ? 'source' : 'target', 'feature') + th('top genes', 'mean_when_fired') + th('n', 'edge_n', 'class="n"') + th('mean change', 'mean_change', 'class="n"') + th("Cohen's d", 'cohens_d', 'class="n"') + th('sign consistency', 'sign_consistency', 'class="n"') + th('p', 'edge_p', 'class="n"') + th('q', 'edge_q', 'class="n"') + '</tr>' +
      list.map((e) => '<tr data-layer="' + e[0] + '" data-feature="' + e[1] + '"><td>' + (e[0] == null ? e[1] : featLink(e[0], e[1])) + '</td><td class="genes-inline">' + esc(name(e)) + '</td><td class="n">' + num(e[2], 'edge_n') + '</td><td class="n">' + num(e[3], 'mean_change') + '</td><td class="n">' + num(e[4], 'cohens_d') + '</td><td class="n">' + num(e[5], 'sign_consistency') + '</td><td class="n">' + num(e[6], 'edge_p') + '</td><td class="n">' + num(e[7], 'edge_q') + '</td></tr>').join('') + '</table>';
  }

  // ln Γ(x) for x > 0 (Lanczos, g = 7, 9 terms: ~1e-15 relative).
  const LANCZOS = [0.99999999999980993, 676.5203681218851, -1259.1392167224028, 771.32342877765313, -176.61502916214059, 12.507343278686905, -0.13857109526572012, 9.9843695780195716e-6, 1.5056327351493116e-7];
  function lnGamma(x) {
    if (x < 0.5) return Math.log(Math.PI / Math.abs(Math.sin(Math.PI * x))) - lnGamma(1 - x);
    x -= 1;
    let a = LANCZOS[0];
    const t = x + 7.5;
    for (let i = 1; i < 9; i++) a += LANCZOS[i] / (x + i);
    return 0.5 * Math.log(2 * Math.PI) + (x + 0.5) * Math.log(t) - t + Math.log(a);
  }
  const lnChoose = (n, k) => lnGamma(n + 1) - lnGamma(k + 1) - lnGamma(n - k + 1);
  // P(X ≥ a), X ~ Hypergeom(population N, successes K, draws n): pmf(a) times the sum of the terms above it,
  // each from the one before by the pmf ratio. The builder leaves p to the page only where a lies above the
  // mode (the terms then only fall) and the tail is well inside the float range.
  function hyperUpper(a, N, K, n) {
    const hi = Math.min(n, K);
    if (a > hi) return 0;
    let t = 1, s = 1;
    for (let k = a; k < hi; k++) {
      t *= ((K - k) * (n - k)) / ((k + 1) * (N - K - n + k + 1));
      s += t;
      if (t < 1e-17 * s) break;
    }
    return Math.min(1, Math.exp(lnChoose(K, a) + lnChoose(N - K, n - a) - lnChoose(N, n)) * s);
  }
  // A term row's p_value: stored, or null where the builder found it equal (to 1e-9) to the hypergeometric
  // tail P(X ≥ overlap), X ~ Hypergeom(background_size, term_size, query_size), which the page computes.
  const termP = (r) => (r[5] != null ? r[5] : hyperUpper(r[1], r[4], r[3], r[2]));
  // A record's cell types (column-wise, see the manifest's columns.cell_type_columns) as rows [label, in_top,
  // top_size, label_cells, n_cells, p, q]; label_cells and n_cells default to the layer's, p to the tail.
  function cellTypeRows(c, cells) {
    if (!c || !c.l) return [];
    const lc = (cells && cells.lc) || [], n = cells ? cells.n : null;
    return c.l.map((lab, j) => {
      const top = Array.isArray(c.t) ? c.t[j] : c.t;
      const K = c.lc && c.lc[j] != null ? c.lc[j] : lc[lab];
      const N = c.n && c.n[j] != null ? c.n[j] : n;
      const p = c.p && c.p[j] != null ? c.p[j] : hyperUpper(c.k[j], N, K, top);
      return [lab, c.k[j], top, K, N, p, c.q[j]];
    });
  }

  // A record's top cells (column-wise: c = cell-id index, a = n_active, r = rank, absent when 0, 1, 2, …;
  // mean_when_active either m, the numbers, or quantised: s = the first cell's, and q = the steps
  // q[k-1] − q[k] of q[k] = round(TOP_CELL_LEVELS · m[k] / s) from q[0] = TOP_CELL_LEVELS) as rows
  // [rank, cell_id, n_active, mean_when_active]; the ids come from the dictionary shards data/cells/<k>.js.
  const TOP_CELL_LEVELS = 255;
  function topCellMeans(tc) {
    if (Array.isArray(tc.m)) return tc.m;
    let q = TOP_CELL_LEVELS;
    return tc.c.map((_, j) => {
      if (j === 0) return tc.s;
      q -= tc.q[j - 1];
      return q * tc.s / TOP_CELL_LEVELS;
    });
  }
  async function topCellRows(tc) {
    if (!tc || !tc.c) return [];
    const shardOf = (i) => Math.floor(i / M.index_shard);
    const keys = [...new Set(tc.c.map(shardOf))];
    const shards = new Map();
    await Promise.all(keys.map(async (k) => { shards.set(k, await load('cells/' + k)); }));
    const means = topCellMeans(tc);
    return tc.c.map((i, j) => [tc.r ? tc.r[j] : j, shards.get(shardOf(i))[String(i)], tc.a[j], means[j]]);
  }

  async function viewFeature(l, f) {
    const meta = M.layers[l];
    if (!meta) return fail('no layer ' + l);
    const [t, G, T, d] = await Promise.all([layerTable(l), genes(), terms(), detail(l, f)]);
    const c = t.cols;
    const i = t.index.get(f);
    if (i == null) return setMain('<h1>' + esc(meta.name) + ' · feature ' + f + '</h1>' + none('this layer has no feature ' + f));
    // Layer tables of the edges' other ends (for their top genes).
    const others = new Set();
    (d.dn || []).concat(d.up || []).forEach((e) => { if (e[0] != null) others.add(e[0]); });
    const tables = {};
    await Promise.all([...others].map(async (o) => { tables[o] = await layerTable(o); }));
    tables[l] = t;
    // Statistics: d.s in feature_stats order (null or missing: the layer table's column, if any).
    const S = (k) => { if (!d.s) return null; const v = d.s[M.columns.feature_stats.indexOf(k)]; return v != null ? v : (c[k] ? c[k][i] : null); };
    // The record's top-gene ids leave out the first `it`, the layer table's top genes of the feature.
    if (d.g && d.g.it) { d.g.id = c.top[i].slice(0, d.g.it).concat(d.g.id); delete d.g.it; }
    const rowsG = geneRows(d, G);
    const best = c.bt[i] >= 0 ? T.name[c.bt[i]] : '';
    let h = '<h1>' + esc(meta.name) + ' · feature ' + f + (best ? ' — ' + esc(best) : '') + '</h1>';
    h += '<p>' + (c.alive ? (c.alive[i] ? '<span class="pill" title="' + esc(DEF.alive) + '">alive</span>' : '<span class="pill" title="' + esc(DEF.alive) + '">dead</span>') : '<span class="muted">no catalog for this layer</span>') +
      (c.nt[i] > 0 ? '<span class="pill ann" title="' + esc(DEF.annotated) + '">annotated</span>' : '') +
      (c.module && c.module[i] >= 0 ? ' module <a href="#/modules/' + l + '">' + num(c.module[i], 'module') + '</a> (' + num(S('module_size'), 'module_size') + ' features)' : '') +
      ' · <a href="#/circuit/' + l + '/' + f + '" id="circuit-link">circuit view</a> · <a href="#/layer/' + l + '">layer explorer</a></p>';

    // Activation summary and histogram.
    h += '<h2>Activation</h2>';
    if (d.s) {
      const stats = M.columns.feature_stats.filter((k) => k !== 'module_size' && S(k) != null);
      h += '<div class="grid2"><div>' + kvTable(stats.map((k) => [k.replace(/_/g, ' '), S(k), k])) + '</div><div>' +
        (d.h ? '<h3 title="' + esc(DEF.hist) + '">Cells by mean activation where it fired</h3>' + histogram(histCounts(d.h, meta.hist), meta.hist) : none('no feature_cells table in the catalog')) + '</div></div>';
    } else h += none('no catalog statistics for this feature');

    // Top genes by both rankings.
    h += '<h2>Top genes</h2>';
    if (rowsG) {
      const geneTable = (id, order, title, def) => '<div><h3 title="' + esc(DEF[def]) + '">' + esc(title) + '</h3>' + (order.length ? '<table id="' + id + '"><tr>' + th('rank', 'rank', 'class="n"') + th('gene', 'n_positions') + th('n fired', 'n_fired', 'class="n"') + th('positions', 'n_positions', 'class="n"') + th('mean when fired', 'mean_when_fired', 'class="n"') + th('mass', 'mass', 'class="n"') + th('fire rate', 'fire_rate', 'class="n"') + '</tr>' +
        order.map((k, r) => { const g = rowsG[k]; const pos = g[3]; return '<tr data-gene="' + esc(geneLabel(G, g[0])) + '"><td class="n">' + num(r + 1, 'rank') + '</td><td>' + geneLink(G, g[0]) + '</td><td class="n">' + num(g[1], 'n_fired') + '</td><td class="n">' + num(pos, 'n_positions') + '</td><td class="n">' + num(g[2], 'mean_when_fired') + '</td><td class="n">' + num(g[2] * g[1], 'mass') + '</td><td class="n">' + num(pos > 0 ? g[1] / pos : null, 'fire_rate') + '</td></tr>'; }).join('') + '</table>' : none('no genes in this ranking')) + '</div>';
      // cm is absent when it lists every row in order, a count n when it lists rows 0 … n − 1; mass is
      // absent when the catalog has no mass list.
      const cm = Array.isArray(d.g.cm) ? d.g.cm : rowsG.slice(0, d.g.cm == null ? rowsG.length : d.g.cm).map((_, k) => k);
      h += '<div class="grid2">' + geneTable('top-genes-cm', cm, 'By conditional mean', 'mean_when_fired') + geneTable('top-genes-mass', d.g.mass || [], 'By mass', 'mass') + '</div>';
    } else h += none('no top genes for this feature');

    // Terms.
    h += '<h2>Significant terms</h2>';
    if (d.t && d.t.length) {
      h += '<table id="terms"><tr>' + th('library', 'terms') + th('term', 'terms') + th('overlap', 'overlap', 'class="n"') + th('query', 'query_size', 'class="n"') + th('term size', 'term_size', 'class="n"') + th('background', 'background_size', 'class="n"') + th('p', 'p_value', 'class="n"') + th('q (atlas)', 'q_value_atlas', 'class="n"') + th('q (catalog)', 'q_value_catalog', 'class="n"') + th('fold', 'fold_enrichment', 'class="n"') + th('overlap genes', 'overlap') + '</tr>' +
        d.t.map((r) => '<tr data-term="' + esc(T.name[r[0]]) + '" data-p="' + termP(r) + '"><td>' + esc(M.libraries[T.library[r[0]]]) + '</td><td>' + termLink(T, r[0]) + '</td><td class="n">' + num(r[1], 'overlap') + '</td><td class="n">' + num(r[2], 'query_size') + '</td><td class="n">' + num(r[3], 'term_size') + '</td><td class="n">' + num(r[4], 'background_size') + '</td><td class="n">' + num(termP(r), 'p_value') + '</td><td class="n">' + num(r[6], 'q_value_atlas') + '</td><td class="n">' + num(r[7], 'q_value_catalog') + '</td><td class="n">' + num(r[8] != null ? r[8] : (r[2] > 0 && r[3] > 0 ? (r[1] / r[2]) / (r[3] / r[4]) : null), 'fold_enrichment') + '</td><td class="overlap">' + overlapGenes(G, rowsG, r[9]).map((s) => '<a href="#/gene/' + encodeURIComponent(s) + '">' + esc(s) + '</a>').join(', ') + '</td></tr>').join('') + '</table>';
    } else h += none(M.annotations.length ? 'no term at q ≤ alpha for this feature' : 'no annotation was given (--annotation)');
    if (d.e && d.e.length) {
      h += '<h3>Network edges among the top genes</h3><table id="edge-tests"><tr>' + th('network', 'observed_edges') + th('observed', 'observed_edges', 'class="n"') + th('null mean', 'null_mean', 'class="n"') + th('p', 'edge_test_p', 'class="n"') + th('q (atlas)', 'q_value_atlas', 'class="n"') + th('q (catalog)', 'q_value_catalog', 'class="n"') + th('permutations', 'permutations', 'class="n"') + th('edges', 'observed_edges') + '</tr>' +
        d.e.map((r) => '<tr><td>' + esc(M.networks[r[0]]) + '</td><td class="n">' + num(r[1], 'observed_edges') + '</td><td class="n">' + num(r[2], 'null_mean') + '</td><td class="n">' + num(r[3], 'edge_test_p') + '</td><td class="n">' + num(r[4], 'q_value_atlas') + '</td><td class="n">' + num(r[5], 'q_value_catalog') + '</td><td class="n">' + num(r[6], 'permutations') + '</td><td class="overlap">' + esc(r[7]) + '</td></tr>').join('') + '</table>';
    }

    // Cell types and top cells.
    h += '<h2>Cell types</h2>';
    const ctRows = cellTypeRows(d.c, meta.cells);
    if (ctRows.length) {
      h += '<table id="cell-types"><tr>' + th('label', 'label_cells') + th('in top', 'in_top', 'class="n"') + th('top cells', 'top_size', 'class="n"') + th('label cells', 'label_cells', 'class="n"') + th('labelled cells', 'n_cells_label', 'class="n"') + th('p', 'cell_p', 'class="n"') + th('q', 'cell_q', 'class="n"') + '</tr>' +
        ctRows.map((r) => '<tr data-label="' + esc(M.labels[r[0]]) + '" data-p="' + r[5] + '"><td>' + esc(M.labels[r[0]]) + '</td><td class="n">' + num(r[1], 'in_top') + '</td><td class="n">' + num(r[2], 'top_size') + '</td><td class="n">' + num(r[3], 'label_cells') + '</td><td class="n">' + num(r[4], 'n_cells_label') + '</td><td class="n">' + num(r[5], 'cell_p') + '</td><td class="n">' + num(r[6], 'cell_q') + '</td></tr>').join('') + '</table>';
    } else h += none(M.labels.length ? 'no cell type at q ≤ alpha for this feature' : 'the annotation tested no cell labels (annotate --obs-column)');
    const tcRows = await topCellRows(d.tc);
    if (tcRows.length) {
      h += '<h3>Top cells</h3><table id="top-cells"><tr>' + th('rank', 'cell_rank', 'class="n"') + th('cell', 'cell_rank') + th('active positions', 'n_active', 'class="n"') + th('mean when active', 'cell_mean', 'class="n"') + '</tr>' +
        tcRows.map((r) => '<tr><td class="n">' + num(r[0] + 1, 'cell_rank') + '</td><td>' + esc(r[1]) + '</td><td class="n">' + num(r[2], 'n_active') + '</td><td class="n">' + num(r[3], 'cell_mean') + '</td></tr>').join('') + '</table>';
    }

    // Module.
    h += '<h2>Co-activation module</h2>';
    if (c.module && c.module[i] >= 0) {
      const members = [];
      for (let j = 0; j < t.n; j++) if (c.module[j] === c.module[i] && j !== i) members.push(j);
      h += '<p>Module ' + num(c.module[i], 'module') + ' of ' + esc(meta.name) + ', ' + num(members.length + 1, 'module_size') + ' features. Other members: ' + members.slice(0, 60).map((j) => featLink(l, c.f[j], String(c.f[j])) + (c.bt[j] >= 0 ? ' <span class="muted">(' + esc(T.name[c.bt[j]]) + ')</span>' : '')).join(', ') + (members.length > 60 ? ' …' : '') + '</p>';
    } else h += none(c.module ? 'the feature is in no module' : 'no catalog for this layer');

    // Circuit edges.
    h += '<h2>Circuit: downstream edges (this feature ablated)</h2>' + edgeTable('edges-down', d.dn, G, tables, false);
    h += '<h2>Circuit: upstream edges (features whose ablation moves this one)</h2>' + edgeTable('edges-up', d.up, G, tables, true);

    // Cross-layer.
    h += '<h2>Across layers</h2>';
    const matchRows = (list, dir) => list.map((m) => '<tr><td>' + dir + '</td><td>' + (m[0] == null ? m[1] : featLink(m[0], m[1])) + '</td><td class="n">' + num(m[2], 'abs_cos') + '</td></tr>').join('');
    if ((d.mf && d.mf.length) || (d.mb && d.mb.length)) {
      h += '<h3>Decoder matches</h3><table id="matches"><tr>' + th('direction', 'abs_cos') + th('feature', 'feature') + th('|cos|', 'abs_cos', 'class="n"') + '</tr>' + matchRows(d.mf || [], 'best match in a later layer') + matchRows(d.mb || [], 'an earlier feature whose best match is this one') + '</table>';
    } else h += none(M.layer_comparisons.length ? 'no decoder matches for this feature' : 'no layer comparison was given (--layers)');
    const hwRows = (list, dir) => list.map((r) => '<tr><td>' + dir + '</td><td>' + (r[0] == null ? r[1] : featLink(r[0], r[1])) + '</td><td class="n">' + num(r[2], 'source_fires') + '</td><td class="n">' + num(r[3], 'cocount') + '</td><td class="n">' + num(r[4], 'pmi') + '</td><td class="n">' + num(r[5], 'npmi') + '</td><td class="n">' + num(r[6], 'pmi_permuted_pairing') + '</td><td class="n">' + num(r[7], 'highway') + '</td></tr>').join('');
    if ((d.hf && d.hf.length) || (d.hb && d.hb.length)) {
      h += '<h3>PMI highways</h3><table id="highways"><tr>' + th('direction', 'pmi') + th('feature', 'feature') + th('source fires', 'source_fires', 'class="n"') + th('co-count', 'cocount', 'class="n"') + th('PMI', 'pmi', 'class="n"') + th('NPMI', 'npmi', 'class="n"') + th('PMI (permuted)', 'pmi_permuted_pairing', 'class="n"') + th('highway', 'highway', 'class="n"') + '</tr>' + hwRows(d.hf || [], 'best target in the next layer') + hwRows(d.hb || [], 'a source whose best target is this one') + '</table>';
    }
    if (d.ls != null) h += '<p>Lifespan: ' + num(d.ls, 'lifespan') + ' layers.</p>';

    // Output effects and steering.
    h += '<h2>Output effects and steering</h2>';
    if (d.fx && d.fx.length) {
      const names = M.columns.effect_row;
      h += '<table id="effects"><tr>' + names.map((k) => th(k.replace(/_/g, ' '), k === 'alpha' ? 'alpha_fx' : k === 'n_cells' ? 'fx_n_cells' : k, 'class="n"')).join('') + '</tr>' + d.fx.map((r) => '<tr>' + r.map((v, k) => '<td class="n">' + num(v, names[k] === 'alpha' ? 'alpha_fx' : names[k] === 'n_cells' ? 'fx_n_cells' : names[k]) + '</td>').join('') + '</tr>').join('') + '</table>';
    } else h += none(M.effects.length ? 'no effects row for this feature' : 'no effects table was given (--effects)');

    // Tools.
    h += '<h2>Exported tools</h2>';
    if (d.tl && d.tl.length) {
      const extra = await load('extra');
      h += '<ul>' + d.tl.map((k) => '<li><a href="#/tools">' + esc(extra.tools[k].name) + '</a> <code>' + esc(extra.tools[k].path) + '</code></li>').join('') + '</ul>';
    } else h += none('no exported tool names this feature');
    setMain(h);
  }

  // ---------------------------------------------------------------------------------------------------
  // Circuit view: the feature's neighbourhood as a graph, filtered by q and |effect|.

  async function viewCircuit(l, f, params) {
    const maxQ = params.q != null ? +params.q : 0.05;
    const minD = params.d != null ? +params.d : 0;
    const hops = params.hops != null ? +params.hops : 1;
    const G = await genes();
    const center = l + ':' + f;
    const nodes = new Map();
    const edges = new Map();
    const addNode = (ll, ff, hop) => { const k = ll + ':' + ff; if (!nodes.has(k)) nodes.set(k, { l: ll, f: ff, hop }); return k; };
    addNode(l, f, 0);
    let frontier = [[l, f]];
    for (let hop = 1; hop <= hops; hop++) {
      const next = [];
      const details = await Promise.all(frontier.map(([ll, ff]) => detail(ll, ff)));
      frontier.forEach(([ll, ff], k) => {
        const d = details[k];
        const keep = (e) => e[0] != null && (e[7] == null || e[7] <= maxQ) && Math.abs(e[4] || 0) >= minD;
        (d.dn || []).filter(keep).forEach((e) => {
          const isNew = !nodes.has(e[0] + ':' + e[1]);
          const b = addNode(e[0], e[1], hop);
          edges.set(ll + ':' + ff + '>' + b, { a: ll + ':' + ff, b, e });
          if (isNew) next.push([e[0], e[1]]);
        });
        (d.up || []).filter(keep).forEach((e) => {
          const isNew = !nodes.has(e[0] + ':' + e[1]);
          const a = addNode(e[0], e[1], hop);
          edges.set(a + '>' + ll + ':' + ff, { a, b: ll + ':' + ff, e });
          if (isNew) next.push([e[0], e[1]]);
        });
      });
      frontier = next.slice(0, 200);
    }
    const layersUsed = [...new Set([...nodes.values()].map((n) => n.l))].sort((a, b) => a - b);
    const tables = {};
    await Promise.all(layersUsed.map(async (o) => { tables[o] = await layerTable(o); }));
    const top = (n) => { const t = tables[n.l]; const i = t && t.index.get(n.f); return t && t.cols.top && i != null ? t.cols.top[i].slice(0, 2).map((g) => geneLabel(G, g)).join(' ') : ''; };
    const colW = 230, rowH = 30, W = Math.max(500, layersUsed.length * colW + 60);
    const perCol = layersUsed.map((ll) => [...nodes.entries()].filter(([, n]) => n.l === ll));
    const H = Math.max(200, Math.max(...perCol.map((c) => c.length)) * rowH + 60);
    const pos = new Map();
    perCol.forEach((col, ci) => {
      col.sort((a, b) => a[1].hop - b[1].hop || a[1].f - b[1].f);
      const off = (H - 40 - col.length * rowH) / 2;
      col.forEach(([k], r) => pos.set(k, [40 + ci * colW, 40 + off + r * rowH + rowH / 2]));
    });
    const maxD = Math.max(1e-9, ...[...edges.values()].map((x) => Math.abs(x.e[4] || 0)));
    let s = '<svg class="circuit" id="circuit" width="' + W + '" height="' + H + '" role="img" aria-label="circuit graph">';
    layersUsed.forEach((ll, ci) => { s += '<text class="col-label" x="' + (40 + ci * colW) + '" y="18">' + esc(layerName(ll)) + '</text>'; });
    edges.forEach(({ a, b, e }) => {
      const [x1, y1] = pos.get(a), [x2, y2] = pos.get(b);
      const mx = (x1 + x2) / 2;
      const cls = (e[3] || 0) > 0 ? 'inh' : 'exc';
      s += '<path class="edge ' + cls + '" d="M' + x1 + ',' + y1 + ' C' + mx + ',' + y1 + ' ' + mx + ',' + y2 + ' ' + x2 + ',' + y2 + '" stroke-width="' + (1 + 5 * Math.abs(e[4] || 0) / maxD).toFixed(2) + '"><title>' + esc(a + ' → ' + b + ": Cohen's d " + fmt(e[4]) + ', mean change ' + fmt(e[3]) + ', q ' + fmt(e[7]) + ' — ' + DEF.cohens_d + ' ' + DEF.edge_q) + '</title></path>';
    });
    nodes.forEach((n, k) => {
      const [x, y] = pos.get(k);
      const t = tables[n.l], i = t && t.index.get(n.f);
      const ann = t && i != null && t.cols.nt[i] > 0;
      s += '<g class="node" data-node="' + k + '"><circle cx="' + x + '" cy="' + y + '" r="' + (k === center ? 9 : 6) + '" fill="' + (k === center ? '#17253d' : ann ? '#2a9d8f' : '#6c7a96') + '"><title>' + esc(layerName(n.l) + ' feature ' + n.f + (top(n) ? ' · ' + top(n) : '')) + '</title></circle><text x="' + (x + 8) + '" y="' + (y - 9) + '">' + esc(n.f + ' ' + top(n)) + '</text></g>';
    });
    s += '</svg>';
    let h = '<h1>Circuit of ' + featLink(l, f, layerName(l) + ' · feature ' + f) + '</h1>';
    h += '<div class="filters"><label title="' + esc(DEF.edge_q) + '">q ≤ <input type="number" id="c-q" step="any" min="0" value="' + maxQ + '"></label><label title="' + esc(DEF.cohens_d) + '">|d| ≥ <input type="number" id="c-d" step="any" min="0" value="' + minD + '"></label><label title="Steps from the feature along edges (each step loads the neighbours\' data)">hops <select id="c-h">' + [1, 2, 3].map((k) => '<option' + (k === hops ? ' selected' : '') + '>' + k + '</option>').join('') + '</select></label><button id="c-apply">Apply</button><span class="legend"><span><i class="sw" style="background:#2166ac"></i>source raises target: it falls when the source is ablated (mean change ≤ 0)</span><span><i class="sw" style="background:#c0392b"></i>source lowers target (mean change > 0)</span><span>width ∝ |Cohen\'s d|</span></span></div>';
    h += '<p class="muted">' + num(nodes.size, 'feature_count') + ' features, ' + num(edges.size, 'n_edges') + ' edges. Click a node to centre the circuit on it.</p>';
    h += edges.size ? s : none('no edges of this feature pass the filters (or no edge table was given)');
    setMain(h);
    const go = () => { location.hash = '#/circuit/' + l + '/' + f + '?q=' + encodeURIComponent(document.getElementById('c-q').value) + '&d=' + encodeURIComponent(document.getElementById('c-d').value) + '&hops=' + document.getElementById('c-h').value; };
    document.getElementById('c-apply').addEventListener('click', go);
    document.querySelectorAll('#circuit .node').forEach((g) => g.addEventListener('click', () => { const [ll, ff] = g.dataset.node.split(':'); location.hash = '#/circuit/' + ll + '/' + ff + '?q=' + maxQ + '&d=' + minD + '&hops=' + hops; }));
  }

  // ---------------------------------------------------------------------------------------------------
  // Gene and term search

  // The gene index holds per gene [layer, n, n × (feature − previous feature, rank code, mean when fired),
  // …] with rank code = rank_cm + rank_base × rank_mass (0: not in that list); decoded to [layer, feature,
  // rank_cm, rank_mass, mean] and ordered by best rank, then mean when fired.
  function decodeGeneIndex(flat) {
    const out = [];
    const base = M.rank_base;
    for (let k = 0; k < flat.length;) {
      const l = flat[k], n = flat[k + 1];
      k += 2;
      let f = 0;
      for (let j = 0; j < n; j++, k += 3) {
        f += flat[k];
        const code = flat[k + 1], cm = code % base, mass = Math.floor(code / base);
        out.push([l, f, cm || null, mass || null, flat[k + 2]]);
      }
    }
    const best = (e) => Math.min(e[2] || Infinity, e[3] || Infinity);
    return out.sort((a, b) => best(a) - best(b) || (b[4] ?? -Infinity) - (a[4] ?? -Infinity) || a[0] - b[0] || a[1] - b[1]);
  }

  async function viewGene(query) {
    const G = await genes();
    const q = query.trim().toLowerCase();
    let h = '<h1>Gene: ' + esc(query) + '</h1>';
    if (!q) return setMain(h + none('type a gene symbol or Ensembl id in the box above'));
    let hit = -1;
    for (let g = 0; g < G.symbol.length; g++) if ((G.symbol[g] || '').toLowerCase() === q || (G.gene_id[g] || '').toLowerCase() === q) { hit = g; break; }
    if (hit < 0) {
      const near = [];
      for (let g = 0; g < G.symbol.length && near.length < 50; g++) if ((G.symbol[g] || '').toLowerCase().startsWith(q) || (G.gene_id[g] || '').toLowerCase().startsWith(q)) near.push(g);
      return setMain(h + (near.length ? '<p>No exact match; genes starting with “' + esc(query) + '”:</p><p id="gene-matches">' + near.map((g) => geneLink(G, g)).join(' ') + '</p>' : none('no feature has this gene among its top genes')));
    }
    const shard = await load('gidx/' + Math.floor(hit / M.index_shard));
    const list = decodeGeneIndex(shard[String(hit)] || []);
    const used = [...new Set(list.map((e) => e[0]))];
    const [T] = await Promise.all([terms()]);
    const tables = {};
    await Promise.all(used.map(async (o) => { tables[o] = await layerTable(o); }));
    h = '<h1>Gene ' + esc(geneLabel(G, hit)) + ' <span class="muted">' + esc(G.gene_id[hit] || '') + '</span></h1><p>' + num(list.length, 'feature_count') + ' features have it among their top genes, ranked by its best rank, then by mean activation when fired.</p><div id="gene-features"></div>';
    setMain(h);
    const bt = (e) => { const t = tables[e[0]]; const i = t.index.get(e[1]); return i == null ? -1 : t.cols.bt[i]; };
    sortableTable('gene-features', [
      { label: 'layer', def: 'layers', key: (e) => e[0], html: (e) => esc(layerName(e[0])) },
      { label: 'feature', def: 'feature', num: 1, key: (e) => e[1], html: (e) => featLink(e[0], e[1], String(e[1])) },
      { label: 'rank (cond. mean)', def: 'rank_cm', num: 1, key: (e) => e[2], html: (e) => num(e[2], 'rank_cm') },
      { label: 'rank (mass)', def: 'rank_mass', num: 1, key: (e) => e[3], html: (e) => num(e[3], 'rank_mass') },
      { label: 'mean when fired', def: 'mean_when_fired', num: 1, key: (e) => e[4], html: (e) => num(e[4], 'mean_when_fired') },
      { label: 'best term', def: 'p_value', key: (e) => termLabel(T, bt(e)), html: (e) => (bt(e) >= 0 ? termLink(T, bt(e)) : '') },
      { label: 'module', def: 'module', num: 1, key: (e) => { const t = tables[e[0]]; const i = t.index.get(e[1]); return t.cols.module && i != null ? t.cols.module[i] : null; }, html: (e) => { const t = tables[e[0]]; const i = t.index.get(e[1]); return t.cols.module && i != null && t.cols.module[i] >= 0 ? num(t.cols.module[i], 'module') : ''; } },
    ], list, { page: 100, rowAttr: (e) => 'data-layer="' + e[0] + '" data-feature="' + e[1] + '"' }).render();
  }

  async function viewTerm(query) {
    const T = await terms();
    let h = '<h1>Term search: ' + esc(query.replace(/^=/, '')) + '</h1>';
    if (query.startsWith('=')) {
      const t = +query.slice(1);
      if (!(t >= 0 && t < T.name.length)) return setMain(h + none('no such term'));
      const shard = await load('tidx/' + Math.floor(t / M.index_shard));
      const list = shard[String(t)] || [];
      const G = await genes();
      const used = [...new Set(list.map((e) => e[0]))];
      const tables = {};
      await Promise.all(used.map(async (o) => { tables[o] = await layerTable(o); }));
      setMain('<h1>' + esc(T.name[t]) + ' <span class="muted">' + esc(M.libraries[T.library[t]]) + '</span></h1><p>' + num(list.length, 'n_features_term') + ' features, by p.</p><div id="term-features"></div>');
      sortableTable('term-features', [
        { label: 'layer', def: 'layers', key: (e) => e[0], html: (e) => esc(layerName(e[0])) },
        { label: 'feature', def: 'feature', num: 1, key: (e) => e[1], html: (e) => featLink(e[0], e[1], String(e[1])) },
        { label: 'top genes', def: 'mean_when_fired', key: () => '', html: (e) => { const tt = tables[e[0]]; const i = tt.index.get(e[1]); return tt.cols.top && i != null ? '<span class="genes-inline">' + tt.cols.top[i].map((g) => geneLink(G, g)).join(' ') + '</span>' : ''; } },
        { label: 'p', def: 'p_value', num: 1, key: (e) => e[2], html: (e) => num(e[2], 'p_value') },
        { label: 'q (atlas)', def: 'q_value_atlas', num: 1, key: (e) => e[3], html: (e) => num(e[3], 'q_value_atlas') },
        { label: 'overlap', def: 'overlap', num: 1, key: (e) => e[4], html: (e) => num(e[4], 'overlap') },
        { label: 'fold', def: 'fold_enrichment', num: 1, key: (e) => e[5], html: (e) => num(e[5], 'fold_enrichment') },
      ], list, { page: 100 }).render();
      return;
    }
    const q = query.trim().toLowerCase();
    if (!q) return setMain(h + none('type words of a term in the box above'));
    const words = q.split(/\s+/);
    const hits = [];
    for (let t = 0; t < T.name.length; t++) { const s = T.name[t].toLowerCase(); if (words.every((w) => s.includes(w))) hits.push(t); }
    setMain(h + (hits.length ? '<p>' + num(hits.length, 'terms') + ' terms.</p><div id="term-hits"></div>' : none('no significant term matches')));
    if (hits.length) sortableTable('term-hits', [
      { label: 'term', def: 'terms', key: (t) => T.name[t], html: (t) => termLink(T, t) },
      { label: 'library', def: 'terms', key: (t) => M.libraries[T.library[t]], html: (t) => esc(M.libraries[T.library[t]]) },
      { label: 'features', def: 'n_features_term', num: 1, key: (t) => T.features[t], html: (t) => num(T.features[t], 'n_features_term') },
    ], hits, { sortCol: 2, sortDir: -1, page: 100 }).render();
  }

  // ---------------------------------------------------------------------------------------------------
  // Flow, consensus, tools, definitions

  function viewFlow() {
    let h = '<h1>Cross-layer flow</h1><h2>Circuit edges between layers</h2>';
    h += M.edge_pairs.length ? '<table><tr>' + th('from', 'layers') + th('to', 'layers') + th('edges', 'edge_pair', 'class="n"') + th('source lowers target (mean change > 0)', 'excitatory', 'class="n"') + th('source raises target (mean change < 0)', 'inhibitory', 'class="n"') + '</tr>' + M.edge_pairs.map((p) => '<tr><td><a href="#/layer/' + p[0] + '">' + esc(layerName(p[0])) + '</a></td><td><a href="#/layer/' + p[1] + '">' + esc(layerName(p[1])) + '</a></td><td class="n">' + num(p[2], 'edge_pair') + '</td><td class="n">' + num(p[3], 'excitatory') + '</td><td class="n">' + num(p[4], 'inhibitory') + '</td></tr>').join('') + '</table>' : none('no edge table was given (--edges)');
    M.edges.forEach((e) => {
      const s = e.summary;
      if (!s) return;
      h += '<h3>' + esc(e.path) + '</h3>' + kvTable([['cells', s.cells, 'edge_n'], ['features traced', s.features_traced, 'feature_count'], ['tests performed', s.tests_performed, 'edge_q'], ['edges written', s.edges_written, 'n_edges'], ['null edges (mean)', s.null ? s.null.null_edges_mean : null, 'Mean edges passing the filters under the sign-flip null'], ['empirical FDR', s.null ? s.null.empirical_fdr : null, 'The observed rule fixed (p ≤ the largest p written, plus the |d| and consistency filters) and applied to every tested edge under each sign-flip permutation: min(1, mean null edges / edges written)']]);
    });
    h += '<h2>PMI highways and decoder matching (scinterp layers)</h2>';
    if (M.layer_comparisons.length) {
      M.layer_comparisons.forEach((c) => {
        const pairs = (c.summary.highways && c.summary.highways.pairs) || [];
        h += '<h3>' + esc(c.path) + '</h3><table><tr>' + th('from', 'layers') + th('to', 'layers') + th('eligible sources', 'source_fires', 'class="n"') + th('highways', 'highway', 'class="n"') + th('fraction', 'highway', 'class="n"') + th('fraction (permuted pairing)', 'pmi_permuted_pairing', 'class="n"') + th('mean best NPMI', 'npmi', 'class="n"') + '</tr>' + pairs.map((p) => '<tr><td>' + esc(p.from) + '</td><td>' + esc(p.to) + '</td><td class="n">' + num(p.eligible_sources, 'source_fires') + '</td><td class="n">' + num(p.highways, 'highway') + '</td><td class="n">' + num(p.highway_fraction, 'highway') + '</td><td class="n">' + num(p.highway_fraction_permuted_pairing, 'pmi_permuted_pairing') + '</td><td class="n">' + num(p.mean_best_npmi, 'npmi') + '</td></tr>').join('') + '</table>';
      });
    } else h += none('no layer comparison was given (--layers)');
    setMain(h);
  }

  async function viewConsensus() {
    let h = '<h1>Cross-model consensus</h1>';
    if (!M.consensus) return setMain(h + none('no consensus table was given (--consensus)'));
    const extra = await load('extra');
    setMain(h + extra.consensus.map((t, k) => '<h2>' + esc(t.path) + '</h2>' + (t.summary ? '<pre>' + esc(JSON.stringify(t.summary, null, 1)) + '</pre>' : '') + '<div id="cons-' + k + '"></div>').join(''));
    extra.consensus.forEach((t, k) => sortableTable('cons-' + k, t.columns.map((name, j) => ({ label: name, def: 'consensus_value', num: 1, key: (r) => r[j], html: (r) => (typeof r[j] === 'number' ? num(r[j], 'consensus_value') : esc(r[j])) })), t.rows, { page: 200 }).render());
  }

  async function viewTools() {
    let h = '<h1>Exported tools</h1>';
    if (!M.tools) return setMain(h + none('no tool cards were given (--tools)'));
    const extra = await load('extra');
    h += extra.tools.map((t) => '<h2>' + esc(t.name) + '</h2><p><code>' + esc(t.path) + '</code></p>' + kvTable(Object.entries(t.fields).map(([k, v]) => [k, typeof v === 'number' ? v : String(v), typeof v === 'number' ? 'generic' : null])) + (t.features.length ? '<p>Built from: ' + t.features.map(([l, f]) => featLink(l, f)).join(', ') + '</p>' : '')).join('');
    setMain(h);
  }

  function viewAbout() {
    const h = '<h1>Definitions</h1><p>Every number in the atlas shows its definition on hover; here they all are. Numbers are rounded to 4 significant digits.</p><dl class="defs">' + Object.keys(DEF).sort().map((k) => '<dt>' + esc(k) + '</dt><dd>' + esc(DEF[k]) + '</dd>').join('') + '</dl>';
    setMain(h);
  }

  // ---------------------------------------------------------------------------------------------------
  // Routing

  // One route renders at a time; a hash change meanwhile renders after it (so a slow page never
  // overwrites a newer one).
  let routing = false, routeAgain = false;
  async function route() {
    if (routing) { routeAgain = true; return; }
    routing = true;
    try {
      do { routeAgain = false; await routeOnce(); } while (routeAgain);
    } finally {
      routing = false;
    }
  }

  async function routeOnce() {
    const hash = location.hash.replace(/^#\/?/, '');
    const [path, qs] = hash.split('?');
    const parts = path.split('/').map(decodeURIComponent);
    const params = {};
    (qs || '').split('&').filter(Boolean).forEach((kv) => { const [k, v] = kv.split('='); params[k] = decodeURIComponent(v || ''); });
    window.scrollTo(0, 0);
    document.getElementById('tip').hidden = true;
    const t0 = performance.now();
    try {
      switch (parts[0]) {
        case '': return await viewOverview();
        case 'layers': return viewLayers();
        case 'layer': return await viewLayer(+parts[1]);
        case 'modules': return await viewModules(+parts[1]);
        case 'feature': return await viewFeature(+parts[1], +parts[2]);
        case 'circuit': return await viewCircuit(+parts[1], +parts[2], params);
        case 'gene': return await viewGene(parts.slice(1).join('/'));
        case 'term': return await viewTerm(parts.slice(1).join('/'));
        case 'flow': return viewFlow();
        case 'consensus': return await viewConsensus();
        case 'tools': return await viewTools();
        case 'about': return viewAbout();
        default: return setMain(none('no such page: ' + hash));
      }
    } catch (err) {
      fail(err);
    } finally {
      // Measured once the browser has laid the page out (the next frame).
      await new Promise((r) => requestAnimationFrame(() => setTimeout(r, 0)));
      atlas.timings.push({ route: hash, ms: performance.now() - t0, at: performance.now() });
      document.body.dataset.route = hash;
      document.body.dataset.ready = String(++routeCount);
    }
  }
  let routeCount = 0;

  async function start() {
    try {
      M = await load('atlas');
    } catch (err) {
      return fail(err);
    }
    atlas.manifest = M;
    if (M.format !== 'scinterp-atlas' || M.format_version !== FORMAT_VERSION) {
      return fail(new Error('data/atlas.js is ' + M.format + ' format ' + M.format_version + ', but this page reads scinterp-atlas format ' + FORMAT_VERSION + ': the page and the data come from different scinterp versions; build the atlas again (scinterp atlas … --overwrite) and copy the whole site folder'));
    }
    document.getElementById('title').textContent = M.title;
    document.title = M.title;
    document.getElementById('gene-search').addEventListener('submit', (ev) => { ev.preventDefault(); location.hash = '#/gene/' + encodeURIComponent(document.getElementById('gene-input').value.trim()); });
    document.getElementById('term-search').addEventListener('submit', (ev) => { ev.preventDefault(); location.hash = '#/term/' + encodeURIComponent(document.getElementById('term-input').value.trim()); });
    window.addEventListener('hashchange', route);
    atlas.ready = true;
    await route();
  }
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
