//! A tool: operator (or its rank-k surrogate) → linear adaptor to `d_latent` → readouts (pseudotime,
//! cell type). Fitting on reference cells, and the evaluation that the ONNX graph reproduces op for op.
//!
//! ```text
//! f      = x·F                    (or (x·L)·R for a surrogate)     x: log1p-CP10k panel expression [n, N]
//! latent = f·W + b                                                 [n, d]
//! pseudotime = (latent·w_t + b_t) reshaped to [n]
//! class_probabilities = softmax(latent·W_c + b_c)                   [n, C]
//! ```

// Index loops here mirror the matrix formulas of the module doc.
#![allow(clippy::needless_range_loop)]

use faer::linalg::matmul::matmul;
use faer::linalg::solvers::Solve;
use faer::{Accum, Mat, MatRef, Par, Side};
use scinterp_engine::rng::Rng;

use crate::error::ExportError;
use crate::operator::{Dense, Surrogate};

/// The first stage of a tool.
#[derive(Clone, Debug)]
pub enum Stage {
    /// The full operator `F`, `[N, M]`.
    Operator(Dense),
    /// A rank-k surrogate `L·R`.
    Surrogate(Surrogate),
}

impl Stage {
    pub fn n_genes(&self) -> usize {
        match self {
            Stage::Operator(f) => f.rows,
            Stage::Surrogate(s) => s.left.rows,
        }
    }

    pub fn n_features(&self) -> usize {
        match self {
            Stage::Operator(f) => f.cols,
            Stage::Surrogate(s) => s.right.cols,
        }
    }
}

/// The weights of a tool.
#[derive(Clone, Debug)]
pub struct Tool {
    pub stage: Stage,
    /// `W`, `[M, d]`.
    pub adaptor: Dense,
    /// `b`, `[d]`.
    pub adaptor_bias: Vec<f32>,
    /// `w_t`, `[d, 1]`.
    pub pseudotime: Dense,
    pub pseudotime_bias: f32,
    /// `W_c`, `[d, C]`.
    pub classes: Dense,
    pub classes_bias: Vec<f32>,
}

/// The three outputs for n cells.
#[derive(Clone, Debug, PartialEq)]
pub struct Outputs {
    pub n: usize,
    pub latent: Vec<f32>,
    pub pseudotime: Vec<f32>,
    pub probabilities: Vec<f32>,
}

fn view(d: &Dense) -> MatRef<'_, f32> {
    MatRef::from_row_major_slice(&d.data, d.rows, d.cols)
}

/// `a·b` in f32, `[n, k]·[k, m]`, row-major out.
fn mm(a: MatRef<'_, f32>, b: MatRef<'_, f32>) -> Mat<f32> {
    let mut out = Mat::<f32>::zeros(a.nrows(), b.ncols());
    matmul(out.as_mut(), Accum::Replace, a, b, 1.0, Par::Seq);
    out
}

impl Tool {
    pub fn n_genes(&self) -> usize {
        self.stage.n_genes()
    }

    pub fn d_latent(&self) -> usize {
        self.adaptor.cols
    }

    pub fn n_classes(&self) -> usize {
        self.classes.cols
    }

    /// The tool on `n` cells, `x` `[n, N]` row-major: the ONNX graph's ops in the same order, in f32.
    pub fn evaluate(&self, x: &[f32], n: usize) -> Outputs {
        let g = self.n_genes();
        assert_eq!(x.len(), n * g, "expression must be [n, N]");
        let xr = MatRef::from_row_major_slice(x, n, g);
        let f = match &self.stage {
            Stage::Operator(op) => mm(xr, view(op)),
            Stage::Surrogate(s) => {
                let t = mm(xr, view(&s.left));
                mm(t.as_ref(), view(&s.right))
            }
        };
        let mut z = mm(f.as_ref(), view(&self.adaptor));
        let d = self.d_latent();
        for i in 0..n {
            for j in 0..d {
                z[(i, j)] += self.adaptor_bias[j];
            }
        }
        let t = mm(z.as_ref(), view(&self.pseudotime));
        let mut logits = mm(z.as_ref(), view(&self.classes));
        let c = self.n_classes();
        let mut probabilities = vec![0f32; n * c];
        for i in 0..n {
            for j in 0..c {
                logits[(i, j)] += self.classes_bias[j];
            }
            let max = (0..c).map(|j| logits[(i, j)]).fold(f32::NEG_INFINITY, f32::max);
            let row = &mut probabilities[i * c..(i + 1) * c];
            let mut sum = 0f32;
            for (j, p) in row.iter_mut().enumerate() {
                *p = (logits[(i, j)] - max).exp();
                sum += *p;
            }
            row.iter_mut().for_each(|p| *p /= sum);
        }
        let mut latent = vec![0f32; n * d];
        for i in 0..n {
            for j in 0..d {
                latent[i * d + j] = z[(i, j)];
            }
        }
        Outputs {
            n,
            latent,
            pseudotime: (0..n).map(|i| t[(i, 0)] + self.pseudotime_bias).collect(),
            probabilities,
        }
    }

    /// The chain folded into one `[N, d]` map `G` and bias, `latent = x·G + b` (exact in real arithmetic;
    /// `apply` uses it on sparse cells, so it costs `nnz·d` per cell).
    pub fn folded(&self) -> Dense {
        let w = view(&self.adaptor);
        let g = match &self.stage {
            Stage::Operator(op) => mm(view(op), w),
            Stage::Surrogate(s) => {
                let rw = mm(view(&s.right), w);
                mm(view(&s.left), rw.as_ref())
            }
        };
        let mut out = Dense::zeros(g.nrows(), g.ncols());
        for i in 0..g.nrows() {
            for j in 0..g.ncols() {
                out.data[i * g.ncols() + j] = g[(i, j)];
            }
        }
        out
    }

    /// The gradient of the pseudotime with respect to the panel expression, `[N]`: the tool is linear
    /// in its input, so `pseudotime(x + δ) − pseudotime(x) = δ·v` exactly (in real arithmetic).
    pub fn pseudotime_gradient(&self) -> Vec<f64> {
        let g = self.folded();
        let d = self.d_latent();
        (0..g.rows)
            .map(|i| {
                (0..d)
                    .map(|j| g.data[i * d + j] as f64 * self.pseudotime.data[j] as f64)
                    .sum()
            })
            .collect()
    }

    /// Pseudotime and class probabilities from a latent row (the readouts alone).
    pub fn readouts(&self, z: &[f32], probabilities: &mut [f32]) -> f32 {
        let d = self.d_latent();
        let c = self.n_classes();
        let mut t = self.pseudotime_bias;
        for j in 0..d {
            t += z[j] * self.pseudotime.data[j];
        }
        let mut max = f32::NEG_INFINITY;
        for (k, p) in probabilities.iter_mut().enumerate() {
            let mut v = self.classes_bias[k];
            for j in 0..d {
                v += z[j] * self.classes.data[j * c + k];
            }
            *p = v;
            max = max.max(v);
        }
        let mut sum = 0f32;
        for p in probabilities.iter_mut() {
            *p = (*p - max).exp();
            sum += *p;
        }
        probabilities.iter_mut().for_each(|p| *p /= sum);
        t
    }
}

/// How the adaptor is fitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdaptorKind {
    /// The top `d` principal axes of the training cells' features.
    Unsupervised,
    /// Reduced-rank ridge regression of one-hot labels on the features: `d' = min(d, C − 1)` axes.
    Supervised,
}

/// What the fit needs besides the stage.
pub struct FitInput<'a> {
    /// Panel expression of all reference cells, `[n, N]`.
    pub x: &'a [f32],
    pub n: usize,
    /// Class index per cell.
    pub labels: &'a [usize],
    pub n_classes: usize,
    pub train: &'a [usize],
    /// The root cell of the ordering (an index into all cells).
    pub root: usize,
    pub d_latent: usize,
    pub adaptor: AdaptorKind,
    /// Neighbours of the kNN graph of the ordering.
    pub knn: usize,
}

/// A fitted tool and the ordering it was fitted to.
pub struct Fitted {
    pub tool: Tool,
    /// The root-anchored ordering of every reference cell in [0, 1].
    pub ordering: Vec<f64>,
}

/// A seeded split: a fraction of each class held out (at least one cell of any class with ≥ 2 cells
/// when the fraction is above 0; none at 0).
pub fn split(labels: &[usize], n_classes: usize, heldout: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut rng = Rng::new(seed, 23);
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for c in 0..n_classes {
        let mut members: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == c).collect();
        rng.shuffle(&mut members);
        let k = if members.len() >= 2 && heldout > 0.0 {
            ((members.len() as f64 * heldout).round() as usize).max(1)
        } else {
            0
        };
        test.extend_from_slice(&members[..k]);
        train.extend_from_slice(&members[k..]);
    }
    train.sort_unstable();
    test.sort_unstable();
    (train, test)
}

/// Features `x·F` (or `(x·L)·R`) in f64, `[n, M]`.
fn features(stage: &Stage, x: &[f32], n: usize) -> Mat<f64> {
    let g = stage.n_genes();
    let xm = Mat::<f64>::from_fn(n, g, |i, j| x[i * g + j] as f64);
    let to64 = |d: &Dense| Mat::<f64>::from_fn(d.rows, d.cols, |i, j| d.data[i * d.cols + j] as f64);
    let mut out = Mat::<f64>::zeros(n, stage.n_features());
    match stage {
        Stage::Operator(op) => matmul(
            out.as_mut(),
            Accum::Replace,
            xm.as_ref(),
            to64(op).as_ref(),
            1.0,
            Par::rayon(0),
        ),
        Stage::Surrogate(s) => {
            let l = to64(&s.left);
            let mut t = Mat::<f64>::zeros(n, s.rank);
            matmul(
                t.as_mut(),
                Accum::Replace,
                xm.as_ref(),
                l.as_ref(),
                1.0,
                Par::rayon(0),
            );
            matmul(
                out.as_mut(),
                Accum::Replace,
                t.as_ref(),
                to64(&s.right).as_ref(),
                1.0,
                Par::rayon(0),
            );
        }
    }
    out
}

fn rows_of(m: &Mat<f64>, rows: &[usize]) -> Mat<f64> {
    Mat::from_fn(rows.len(), m.ncols(), |i, j| m[(rows[i], j)])
}

/// Fits the adaptor and readouts of a tool on the training cells.
pub fn fit(stage: Stage, input: &FitInput<'_>) -> Result<Fitted, ExportError> {
    let f_all = features(&stage, input.x, input.n);
    let m = f_all.ncols();
    let f_train = rows_of(&f_all, input.train);
    let nt = input.train.len();
    if nt < 3 {
        return Err(ExportError::option(
            "--input",
            format!("only {nt} training cells; need at least 3"),
        ));
    }
    let mean: Vec<f64> = (0..m)
        .map(|j| (0..nt).map(|i| f_train[(i, j)]).sum::<f64>() / nt as f64)
        .collect();
    let centred = Mat::<f64>::from_fn(nt, m, |i, j| f_train[(i, j)] - mean[j]);
    let w: Mat<f64> = match input.adaptor {
        AdaptorKind::Unsupervised => {
            let svd = centred
                .thin_svd()
                .map_err(|e| ExportError::Numeric(format!("PCA of the features failed: {e:?}")))?;
            let d = input.d_latent.min(svd.S().column_vector().nrows());
            let v = svd.V();
            Mat::from_fn(m, d, |i, j| {
                // Sign convention: the largest-magnitude entry of each axis is positive (reproducible signs).
                let col = v.col(j);
                let big = (0..m)
                    .max_by(|&a, &b| col[a].abs().total_cmp(&col[b].abs()))
                    .unwrap_or(0);
                col[i] * col[big].signum()
            })
        }
        AdaptorKind::Supervised => {
            let c = input.n_classes;
            let y_mean: Vec<f64> = (0..c)
                .map(|k| input.train.iter().filter(|&&i| input.labels[i] == k).count() as f64 / nt as f64)
                .collect();
            let y = Mat::<f64>::from_fn(nt, c, |i, k| {
                f64::from(input.labels[input.train[i]] == k) - y_mean[k]
            });
            let mut gram = Mat::<f64>::zeros(m, m);
            matmul(
                gram.as_mut(),
                Accum::Replace,
                centred.transpose(),
                centred.as_ref(),
                1.0,
                Par::rayon(0),
            );
            let ridge = 1e-3 * (0..m).map(|i| gram[(i, i)]).sum::<f64>() / m as f64 + 1e-12;
            for i in 0..m {
                gram[(i, i)] += ridge;
            }
            let mut fty = Mat::<f64>::zeros(m, c);
            matmul(
                fty.as_mut(),
                Accum::Replace,
                centred.transpose(),
                y.as_ref(),
                1.0,
                Par::rayon(0),
            );
            let llt = gram
                .llt(Side::Lower)
                .map_err(|e| ExportError::Numeric(format!("the ridge system failed: {e:?}")))?;
            let b = llt.solve(fty.as_ref());
            let mut fitted = Mat::<f64>::zeros(nt, c);
            matmul(
                fitted.as_mut(),
                Accum::Replace,
                centred.as_ref(),
                b.as_ref(),
                1.0,
                Par::rayon(0),
            );
            let svd = fitted
                .thin_svd()
                .map_err(|e| ExportError::Numeric(format!("the reduced-rank step failed: {e:?}")))?;
            let d = input.d_latent.min(c.saturating_sub(1)).max(1);
            let mut w = Mat::<f64>::zeros(m, d);
            matmul(
                w.as_mut(),
                Accum::Replace,
                b.as_ref(),
                svd.V().subcols(0, d),
                1.0,
                Par::rayon(0),
            );
            w
        }
    };
    let d = w.ncols();
    let bias: Vec<f64> = (0..d)
        .map(|j| -(0..m).map(|i| mean[i] * w[(i, j)]).sum::<f64>())
        .collect();
    let mut z_all = Mat::<f64>::zeros(input.n, d);
    matmul(
        z_all.as_mut(),
        Accum::Replace,
        f_all.as_ref(),
        w.as_ref(),
        1.0,
        Par::rayon(0),
    );
    for i in 0..input.n {
        for j in 0..d {
            z_all[(i, j)] += bias[j];
        }
    }
    let ordering = root_ordering(&z_all, input.root, input.knn);
    // Pseudotime readout: least squares (tiny ridge) of the ordering on [z, 1], training cells.
    let z_train = rows_of(&z_all, input.train);
    let zt = Mat::<f64>::from_fn(nt, d + 1, |i, j| if j < d { z_train[(i, j)] } else { 1.0 });
    let tt = Mat::<f64>::from_fn(nt, 1, |i, _| ordering[input.train[i]]);
    let mut a = Mat::<f64>::zeros(d + 1, d + 1);
    matmul(
        a.as_mut(),
        Accum::Replace,
        zt.transpose(),
        zt.as_ref(),
        1.0,
        Par::Seq,
    );
    let ridge = 1e-8 * (0..=d).map(|i| a[(i, i)]).sum::<f64>() + 1e-12;
    for i in 0..d {
        a[(i, i)] += ridge;
    }
    let mut rhs = Mat::<f64>::zeros(d + 1, 1);
    matmul(
        rhs.as_mut(),
        Accum::Replace,
        zt.transpose(),
        tt.as_ref(),
        1.0,
        Par::Seq,
    );
    let coef = a
        .llt(Side::Lower)
        .map_err(|e| ExportError::Numeric(format!("the pseudotime readout failed: {e:?}")))?
        .solve(rhs.as_ref());
    let (cw, cb) = logistic(
        &z_train,
        &input.train.iter().map(|&i| input.labels[i]).collect::<Vec<_>>(),
        input.n_classes,
    );
    let to32 = |m: &Mat<f64>| Dense {
        rows: m.nrows(),
        cols: m.ncols(),
        data: (0..m.nrows())
            .flat_map(|i| (0..m.ncols()).map(move |j| (i, j)))
            .map(|(i, j)| m[(i, j)] as f32)
            .collect(),
    };
    let tool = Tool {
        stage,
        adaptor: to32(&w),
        adaptor_bias: bias.iter().map(|&b| b as f32).collect(),
        pseudotime: Dense {
            rows: d,
            cols: 1,
            data: (0..d).map(|j| coef[(j, 0)] as f32).collect(),
        },
        pseudotime_bias: coef[(d, 0)] as f32,
        classes: to32(&cw),
        classes_bias: cb.iter().map(|&b| b as f32).collect(),
    };
    Ok(Fitted { tool, ordering })
}

/// The root-anchored ordering: shortest-path (Dijkstra) distance from `root` over the symmetrised
/// k-nearest-neighbour graph of the rows of `z` (Euclidean edge lengths), as ranks scaled to [0, 1]
/// (ties share their mean rank; cells the graph cannot reach rank last).
pub fn root_ordering(z: &Mat<f64>, root: usize, k: usize) -> Vec<f64> {
    use rayon::prelude::*;
    let n = z.nrows();
    let d = z.ncols();
    let dist = |a: usize, b: usize| {
        (0..d)
            .map(|j| (z[(a, j)] - z[(b, j)]).powi(2))
            .sum::<f64>()
            .sqrt()
    };
    let k = k.min(n.saturating_sub(1));
    let neighbours: Vec<Vec<(usize, f64)>> = (0..n)
        .into_par_iter()
        .map(|i| {
            let mut all: Vec<(usize, f64)> = (0..n).filter(|&j| j != i).map(|j| (j, dist(i, j))).collect();
            if k < all.len() {
                all.select_nth_unstable_by(k, |a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
                all.truncate(k);
            }
            all
        })
        .collect();
    let mut adj: Vec<Vec<(usize, f64)>> = neighbours.clone();
    for (i, list) in neighbours.iter().enumerate() {
        for &(j, w) in list {
            adj[j].push((i, w));
        }
    }
    let mut best = vec![f64::INFINITY; n];
    let mut heap = std::collections::BinaryHeap::new();
    best[root] = 0.0;
    heap.push((std::cmp::Reverse(OrdF64(0.0)), root));
    while let Some((std::cmp::Reverse(OrdF64(du)), u)) = heap.pop() {
        if du > best[u] {
            continue;
        }
        for &(v, w) in &adj[u] {
            let nd = du + w;
            if nd < best[v] {
                best[v] = nd;
                heap.push((std::cmp::Reverse(OrdF64(nd)), v));
            }
        }
    }
    let r = ranks(&best);
    let denom = (n.max(2) - 1) as f64;
    r.iter().map(|&x| x / denom).collect()
}

/// An f64 ordered by `total_cmp` (for heaps); equality and order agree.
struct OrdF64(f64);
impl PartialEq for OrdF64 {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}
impl Eq for OrdF64 {}
impl PartialOrd for OrdF64 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OrdF64 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// 0-based ranks with ties averaged (infinities rank last, tied).
pub fn ranks(x: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut r = vec![0f64; x.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && x[order[j + 1]] == x[order[i]] {
            j += 1;
        }
        let mean = (i + j) as f64 / 2.0;
        for &o in &order[i..=j] {
            r[o] = mean;
        }
        i = j + 1;
    }
    r
}

/// Spearman's rank correlation.
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    let (ra, rb) = (ranks(a), ranks(b));
    let n = a.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in ra.iter().zip(&rb) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma).powi(2);
        sbb += (y - mb).powi(2);
    }
    if saa == 0.0 || sbb == 0.0 {
        return 0.0;
    }
    sab / (saa * sbb).sqrt()
}

/// Multinomial logistic regression with an L2 penalty (λ = 1e-3 on the weights), by Nesterov-accelerated
/// gradient descent on standardised inputs (3,000 steps); the standardisation is folded back into the
/// returned `[d, C]` weights and `[C]` bias.
pub fn logistic(z: &Mat<f64>, y: &[usize], c: usize) -> (Mat<f64>, Vec<f64>) {
    let (n, d) = (z.nrows(), z.ncols());
    let mu: Vec<f64> = (0..d)
        .map(|j| (0..n).map(|i| z[(i, j)]).sum::<f64>() / n as f64)
        .collect();
    let sd: Vec<f64> = (0..d)
        .map(|j| {
            ((0..n).map(|i| (z[(i, j)] - mu[j]).powi(2)).sum::<f64>() / n as f64)
                .sqrt()
                .max(1e-12)
        })
        .collect();
    let x = Mat::<f64>::from_fn(
        n,
        d + 1,
        |i, j| if j < d { (z[(i, j)] - mu[j]) / sd[j] } else { 1.0 },
    );
    let lambda = 1e-3;
    // Lipschitz bound of the mean cross-entropy gradient: ½·λ_max(XᵀX/n) ≤ ½·trace(XᵀX/n) = ½·(d + 1).
    let step = 1.0 / (0.5 * (d as f64 + 1.0) + lambda);
    let mut w = Mat::<f64>::zeros(d + 1, c);
    let mut prev = w.clone();
    let mut p = Mat::<f64>::zeros(n, c);
    let mut grad = Mat::<f64>::zeros(d + 1, c);
    for t in 0..3000 {
        let mom = t as f64 / (t as f64 + 3.0);
        let look = Mat::<f64>::from_fn(d + 1, c, |i, j| w[(i, j)] + mom * (w[(i, j)] - prev[(i, j)]));
        matmul(
            p.as_mut(),
            Accum::Replace,
            x.as_ref(),
            look.as_ref(),
            1.0,
            Par::Seq,
        );
        for i in 0..n {
            let max = (0..c).map(|j| p[(i, j)]).fold(f64::NEG_INFINITY, f64::max);
            let mut s = 0.0;
            for j in 0..c {
                p[(i, j)] = (p[(i, j)] - max).exp();
                s += p[(i, j)];
            }
            for j in 0..c {
                p[(i, j)] = p[(i, j)] / s - f64::from(y[i] == j);
            }
        }
        matmul(
            grad.as_mut(),
            Accum::Replace,
            x.transpose(),
            p.as_ref(),
            1.0 / n as f64,
            Par::Seq,
        );
        for i in 0..d {
            for j in 0..c {
                grad[(i, j)] += lambda * look[(i, j)];
            }
        }
        prev = w;
        w = Mat::from_fn(d + 1, c, |i, j| look[(i, j)] - step * grad[(i, j)]);
    }
    let weights = Mat::<f64>::from_fn(d, c, |i, j| w[(i, j)] / sd[i]);
    let bias = (0..c)
        .map(|j| w[(d, j)] - (0..d).map(|i| w[(i, j)] * mu[i] / sd[i]).sum::<f64>())
        .collect();
    (weights, bias)
}

/// Accuracy, balanced accuracy and macro-F1 of predicted classes.
pub fn classification_metrics(truth: &[usize], pred: &[usize], c: usize) -> (f64, f64, f64) {
    let n = truth.len().max(1) as f64;
    let acc = truth.iter().zip(pred).filter(|(a, b)| a == b).count() as f64 / n;
    let (mut recalls, mut f1s) = (Vec::new(), Vec::new());
    for k in 0..c {
        let tp = truth.iter().zip(pred).filter(|(&a, &b)| a == k && b == k).count() as f64;
        let actual = truth.iter().filter(|&&a| a == k).count() as f64;
        let predicted = pred.iter().filter(|&&b| b == k).count() as f64;
        if actual == 0.0 {
            continue;
        }
        recalls.push(tp / actual);
        let precision = if predicted == 0.0 { 0.0 } else { tp / predicted };
        let recall = tp / actual;
        f1s.push(if precision + recall == 0.0 {
            0.0
        } else {
            2.0 * precision * recall / (precision + recall)
        });
    }
    let mean = |v: &[f64]| {
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    (acc, mean(&recalls), mean(&f1s))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gradient predicts the pseudotime change of any input change (the tool is linear).
    #[test]
    fn pseudotime_gradient_predicts_the_change() {
        let mut rng = Rng::new(3, 0);
        let mut dense = |r: usize, c: usize| Dense {
            rows: r,
            cols: c,
            data: (0..r * c).map(|_| rng.normal() as f32).collect(),
        };
        let tool = Tool {
            stage: Stage::Surrogate(Surrogate {
                rank: 3,
                left: dense(7, 3),
                right: dense(3, 5),
                retained_energy: 1.0,
            }),
            adaptor: dense(5, 4),
            adaptor_bias: vec![0.5, -1.0, 0.0, 2.0],
            pseudotime: dense(4, 1),
            pseudotime_bias: 0.25,
            classes: dense(4, 2),
            classes_bias: vec![0.0, 1.0],
        };
        let v = tool.pseudotime_gradient();
        let x: Vec<f32> = (0..7).map(|i| i as f32 * 0.3).collect();
        let delta: Vec<f32> = (0..7).map(|i| (i as f32 - 3.0) * 0.1).collect();
        let moved: Vec<f32> = x.iter().zip(&delta).map(|(a, b)| a + b).collect();
        let change = tool.evaluate(&moved, 1).pseudotime[0] - tool.evaluate(&x, 1).pseudotime[0];
        let predicted: f64 = delta.iter().zip(&v).map(|(d, v)| *d as f64 * v).sum();
        assert!(
            (change as f64 - predicted).abs() < 1e-4 * predicted.abs().max(1.0),
            "{change} vs {predicted}"
        );
        assert!(predicted.abs() > 1e-3);
    }

    #[test]
    fn ranks_and_spearman() {
        assert_eq!(ranks(&[3.0, 1.0, 1.0, f64::INFINITY]), vec![2.0, 0.5, 0.5, 3.0]);
        assert!((spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]) - 1.0).abs() < 1e-12);
        assert!((spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
    }

    #[test]
    fn ordering_follows_a_line_from_the_root() {
        let z = Mat::<f64>::from_fn(20, 2, |i, j| if j == 0 { i as f64 } else { 0.1 * (i % 2) as f64 });
        let o = root_ordering(&z, 0, 3);
        assert!((spearman(&o, &(0..20).map(|i| i as f64).collect::<Vec<_>>()) - 1.0).abs() < 1e-12);
        let o = root_ordering(&z, 19, 3);
        assert!(o[19] == 0.0 && o[0] == 1.0);
    }

    #[test]
    fn logistic_separates_separable_classes() {
        let z = Mat::<f64>::from_fn(60, 2, |i, j| {
            if j == 0 {
                (i / 20) as f64 * 3.0 + 0.1 * (i % 7) as f64
            } else {
                (i % 5) as f64
            }
        });
        let y: Vec<usize> = (0..60).map(|i| i / 20).collect();
        let (w, b) = logistic(&z, &y, 3);
        let pred: Vec<usize> = (0..60)
            .map(|i| {
                (0..3)
                    .max_by(|&a, &c| {
                        let s = |k: usize| b[k] + (0..2).map(|j| z[(i, j)] * w[(j, k)]).sum::<f64>();
                        s(a).total_cmp(&s(c))
                    })
                    .unwrap()
            })
            .collect();
        let (acc, bal, f1) = classification_metrics(&y, &pred, 3);
        assert!(acc > 0.95 && bal > 0.95 && f1 > 0.95, "{acc} {bal} {f1}");
    }

    #[test]
    fn split_is_stratified_and_seeded() {
        let labels: Vec<usize> = (0..100).map(|i| i % 4).collect();
        let (tr, te) = split(&labels, 4, 0.2, 7);
        assert_eq!(tr.len() + te.len(), 100);
        assert_eq!(te.len(), 20);
        for k in 0..4 {
            assert_eq!(te.iter().filter(|&&i| labels[i] == k).count(), 5);
        }
        assert_eq!(split(&labels, 4, 0.2, 7).1, te);
        assert_ne!(split(&labels, 4, 0.2, 8).1, te);
        // 0 holds out nothing (it held out one cell per class).
        let (tr, te) = split(&labels, 4, 0.0, 7);
        assert_eq!((tr.len(), te.len()), (100, 0));
        // A small positive fraction still holds out one cell of each class.
        assert_eq!(split(&labels, 4, 0.001, 7).1.len(), 4);
    }
}
