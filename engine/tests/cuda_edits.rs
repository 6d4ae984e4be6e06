//! Hook edits on the GPU (`hook_edits.cu`, `scinterp_kernels::gpu::EditList`) against the CPU reference,
//! `Edit::apply` in sequence. The builder and its device encoding (run on the CPU by
//! `EditList::apply_host`) are tested everywhere; the kernels only where a GPU is present (elsewhere
//! each GPU test prints that it skipped).

use half::bf16;
use scinterp_engine::{Edit, HookPoint, Matrix};
use scinterp_kernels::gpu::open_or_skip as gpu;
use scinterp_kernels::gpu::{EditList, EditListError, EditOp, EditRecord};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// Uniform in [-scale, scale).
    fn value(&mut self, scale: f32) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
    }
    fn values(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.value(scale)).collect()
    }
}

/// `n_edits` random edits of all four kinds on a `[tokens, d]` tensor, with rows drawn from a few
/// "hot" rows so that many rows receive several edits (and some edits repeat a row).
fn random_edits(rng: &mut Rng, tokens: usize, d: usize, n_edits: usize) -> Vec<Edit> {
    let hot: Vec<usize> = (0..tokens.min(6)).map(|_| rng.below(tokens)).collect();
    (0..n_edits)
        .map(|_| {
            let n_rows = 1 + rng.below(5);
            let rows: Vec<usize> = (0..n_rows)
                .map(|_| {
                    if rng.below(2) == 0 {
                        hot[rng.below(hot.len())]
                    } else {
                        rng.below(tokens)
                    }
                })
                .collect();
            match rng.below(4) {
                0 => Edit::AddDirection {
                    direction: rng.values(d, 1.0),
                    scales: rng.values(rows.len(), 3.0),
                    rows,
                },
                1 => Edit::Zero { rows },
                2 => Edit::Replace {
                    values: rng.values(rows.len() * d, 2.0),
                    rows,
                },
                _ => Edit::MeanAblate {
                    mean: rng.values(d, 0.5),
                    rows,
                },
            }
        })
        .collect()
}

fn push(list: &mut EditList, edit: &Edit) -> Result<(), EditListError> {
    match edit {
        Edit::AddDirection {
            rows,
            direction,
            scales,
        } => list.add_direction(rows, direction, scales),
        Edit::Zero { rows } => list.zero(rows),
        Edit::Replace { rows, values } => list.replace(rows, values),
        Edit::MeanAblate { rows, mean } => list.mean_ablate(rows, mean),
    }
}

fn list_of(edits: &[Edit], tokens: usize, d: usize) -> EditList {
    let mut list = EditList::new(tokens, d).unwrap();
    for e in edits {
        push(&mut list, e).unwrap();
    }
    list
}

/// The CPU reference: `Edit::validate` then `Edit::apply` in list order.
fn cpu_apply(x: &[f32], edits: &[Edit], tokens: usize, d: usize) -> Vec<f32> {
    let mut m = Matrix::from_vec(tokens, d, x.to_vec());
    for e in edits {
        e.validate(HookPoint::Embed, tokens, d).unwrap();
        e.apply(&mut m);
    }
    m.as_slice().to_vec()
}

fn to_bf16(x: &[f32]) -> Vec<bf16> {
    x.iter().map(|&v| bf16::from_f32(v)).collect()
}

fn from_bf16(x: &[bf16]) -> Vec<f32> {
    x.iter().map(|v| v.to_f32()).collect()
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn edit_list_encodes_all_four_kinds_in_order() {
    let (tokens, d) = (5, 3);
    let mut list = EditList::new(tokens, d).unwrap();
    list.add_direction(&[4, 1], &[1.0, 2.0, 3.0], &[0.5, -2.0])
        .unwrap();
    list.zero(&[1]).unwrap();
    list.replace(&[0, 4], &[7.0, 8.0, 9.0, 10.0, 11.0, 12.0]).unwrap();
    list.mean_ablate(&[2], &[0.25, 0.5, 0.75]).unwrap();
    list.add_direction(&[1], &[-1.0, 0.0, 1.0], &[3.0]).unwrap();
    let rec = |row, op, scale, offset| EditRecord {
        row,
        op,
        scale,
        offset,
    };
    assert_eq!(
        list.records(),
        &[
            rec(4, EditOp::AddDirection, 0.5, 0),
            rec(1, EditOp::AddDirection, -2.0, 0),
            rec(1, EditOp::Zero, 0.0, 0),
            rec(0, EditOp::Replace, 0.0, 3),
            rec(4, EditOp::Replace, 0.0, 6),
            rec(2, EditOp::MeanAblate, 0.0, 9),
            rec(1, EditOp::AddDirection, 3.0, 12),
        ]
    );
    assert_eq!(
        list.pool(),
        &[1.0, 2.0, 3.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 0.25, 0.5, 0.75, -1.0, 0.0, 1.0]
    );
    assert_eq!(list.len(), 7);
    // Device encoding: rows ascending, a row's records in list order, and everything before a row's
    // last overwrite dropped (row 1: the add before the zero; row 4: the add before the replace).
    let (records, segments) = list.segments();
    assert_eq!(
        records,
        vec![
            rec(0, EditOp::Replace, 0.0, 3),
            rec(1, EditOp::Zero, 0.0, 0),
            rec(1, EditOp::AddDirection, 3.0, 12),
            rec(2, EditOp::MeanAblate, 0.0, 9),
            rec(4, EditOp::Replace, 0.0, 6),
        ]
    );
    assert_eq!(segments, vec![0, 1, 3, 4, 5]);
    // And the encoding applies as the CPU does.
    let x: Vec<f32> = (0..tokens * d).map(|i| i as f32).collect();
    let mut got = x.clone();
    list.apply_host(&mut got).unwrap();
    let edits = [
        Edit::AddDirection {
            rows: vec![4, 1],
            direction: vec![1.0, 2.0, 3.0],
            scales: vec![0.5, -2.0],
        },
        Edit::Zero { rows: vec![1] },
        Edit::Replace {
            rows: vec![0, 4],
            values: vec![7.0, 8.0, 9.0, 10.0, 11.0, 12.0],
        },
        Edit::MeanAblate {
            rows: vec![2],
            mean: vec![0.25, 0.5, 0.75],
        },
        Edit::add_direction(vec![1], vec![-1.0, 0.0, 1.0], 3.0),
    ];
    let want = cpu_apply(&x, &edits, tokens, d);
    assert_eq!(got, want);
    assert_eq!(&got[3..6], &[-3.0, 0.0, 3.0]);
    // Empty edits add nothing.
    let mut empty = EditList::new(tokens, d).unwrap();
    empty.add_direction(&[], &[0.0; 3], &[]).unwrap();
    empty.zero(&[]).unwrap();
    empty.replace(&[], &[]).unwrap();
    empty.mean_ablate(&[], &[0.0; 3]).unwrap();
    assert!(empty.is_empty() && empty.pool().is_empty());
    assert_eq!(empty.segments(), (vec![], vec![0]));
}

#[test]
fn edit_list_rejects_bad_edits_without_panicking_or_changing() {
    let (tokens, d) = (4, 3);
    let mut list = EditList::new(tokens, d).unwrap();
    list.zero(&[0]).unwrap();
    let before = list.clone();
    let row_err = |row| EditListError::RowOutOfRange { row, tokens };
    assert_eq!(list.zero(&[1, 4]), Err(row_err(4)));
    assert_eq!(list.zero(&[usize::MAX]), Err(row_err(usize::MAX)));
    assert_eq!(
        list.add_direction(&[0], &[1.0; 3], &[1.0, 2.0]),
        Err(EditListError::Length {
            what: "scales",
            got: 2,
            want: 1
        })
    );
    assert_eq!(
        list.add_direction(&[0], &[1.0; 2], &[1.0]),
        Err(EditListError::Length {
            what: "direction",
            got: 2,
            want: 3
        })
    );
    assert_eq!(list.add_direction(&[9], &[1.0; 3], &[1.0]), Err(row_err(9)));
    assert_eq!(
        list.replace(&[0, 1], &[0.0; 5]),
        Err(EditListError::Length {
            what: "values",
            got: 5,
            want: 6
        })
    );
    assert_eq!(list.replace(&[0, 7], &[0.0; 6]), Err(row_err(7)));
    assert_eq!(
        list.mean_ablate(&[0], &[0.0; 4]),
        Err(EditListError::Length {
            what: "mean",
            got: 4,
            want: 3
        })
    );
    assert_eq!(list.mean_ablate(&[5], &[0.0; 3]), Err(row_err(5)));
    assert_eq!(list, before, "a rejected edit changed the list");
    assert!(matches!(
        EditList::new(1 << 31, 4),
        Err(EditListError::TooLarge(_))
    ));
    assert!(matches!(
        EditList::new(4, usize::MAX),
        Err(EditListError::TooLarge(_))
    ));
    // The host application checks the tensor's length.
    assert!(list.apply_host(&mut [0.0; 11]).is_err());
    assert!(list.apply_host_bf16(&mut [bf16::ZERO; 13]).is_err());
    // The engine's validation agrees on what is invalid.
    for bad in [
        Edit::Zero { rows: vec![4] },
        Edit::add_direction(vec![0], vec![1.0; 2], 1.0),
        Edit::Replace {
            rows: vec![0, 1],
            values: vec![0.0; 5],
        },
        Edit::MeanAblate {
            rows: vec![0],
            mean: vec![0.0; 4],
        },
    ] {
        assert!(bad.validate(HookPoint::Embed, tokens, d).is_err());
        assert!(push(&mut list, &bad).is_err());
    }
}

/// The device encoding (sorted segments, overwrite trimming, the kernel's arithmetic) equals `Edit::apply`
/// in sequence bit for bit, in f32 and (rounded once per row) in bf16.
#[test]
fn device_encoding_on_the_cpu_equals_sequential_edits() {
    let mut rng = Rng(0x5eed_ed17);
    for (tokens, d, n_edits) in [(1, 1, 3), (7, 5, 12), (40, 33, 60), (64, 128, 200)] {
        for _ in 0..4 {
            let x = rng.values(tokens * d, 4.0);
            let edits = random_edits(&mut rng, tokens, d, n_edits);
            let list = list_of(&edits, tokens, d);
            let want = cpu_apply(&x, &edits, tokens, d);
            let mut got = x.clone();
            list.apply_host(&mut got).unwrap();
            assert_eq!(bits(&got), bits(&want), "f32 tokens={tokens} d={d}");

            let xb = to_bf16(&x);
            let want_b = to_bf16(&cpu_apply(&from_bf16(&xb), &edits, tokens, d));
            let mut got_b = xb.clone();
            list.apply_host_bf16(&mut got_b).unwrap();
            assert_eq!(got_b, want_b, "bf16 tokens={tokens} d={d}");
        }
    }
}

#[test]
fn hook_edits_kernel_matches_sequential_cpu_edits() {
    let Some((stream, kernels)) = gpu("hook_edits") else {
        return;
    };
    let mut rng = Rng(0xfeed_beef);
    for (tokens, d, n_edits) in [
        (1, 1, 3),
        (7, 5, 12),
        (40, 33, 60),
        (300, 1152, 400),
        (64, 2049, 50),
    ] {
        let x = rng.values(tokens * d, 4.0);
        let edits = random_edits(&mut rng, tokens, d, n_edits);
        let list = list_of(&edits, tokens, d);
        let dev = list.upload(&stream).unwrap();
        assert_eq!(dev.shape(), (tokens, d));

        let want = cpu_apply(&x, &edits, tokens, d);
        let mut dx = stream.clone_htod(&x).unwrap();
        kernels.hook_edits(&stream, &mut dx, (tokens, d), &dev).unwrap();
        let got = stream.clone_dtoh(&dx).unwrap();
        // Same operations, same order, no FMA: bit-identical.
        assert_eq!(bits(&got), bits(&want), "f32 tokens={tokens} d={d}");

        let xb = to_bf16(&x);
        let want_b = to_bf16(&cpu_apply(&from_bf16(&xb), &edits, tokens, d));
        let mut dxb = stream.clone_htod(&xb).unwrap();
        kernels
            .hook_edits_bf16(&stream, &mut dxb, (tokens, d), &dev)
            .unwrap();
        let got_b = stream.clone_dtoh(&dxb).unwrap();
        assert_eq!(got_b, want_b, "bf16 tokens={tokens} d={d}");
        println!(
            "hook_edits tokens={tokens} d={d}: {} records, {} rows edited, exact",
            list.len(),
            dev.rows_edited()
        );
    }
    // Several edits of one row, all kinds, in an order where each one matters.
    let (tokens, d) = (3, 4);
    let edits = vec![
        Edit::add_direction(vec![1, 1], vec![1.0, 2.0, 3.0, 4.0], 0.5),
        Edit::MeanAblate {
            rows: vec![2],
            mean: vec![9.0; 4],
        },
        Edit::add_direction(vec![2], vec![1.0; 4], -1.0),
        Edit::Zero { rows: vec![0] },
        Edit::add_direction(vec![0], vec![0.0, 1.0, 0.0, 1.0], 2.0),
    ];
    let x: Vec<f32> = (0..12).map(|i| i as f32).collect();
    let want = cpu_apply(&x, &edits, tokens, d);
    let dev = list_of(&edits, tokens, d).upload(&stream).unwrap();
    let mut dx = stream.clone_htod(&x).unwrap();
    kernels.hook_edits(&stream, &mut dx, (tokens, d), &dev).unwrap();
    assert_eq!(stream.clone_dtoh(&dx).unwrap(), want);
    // An empty list is a no-op.
    let empty = EditList::new(tokens, d).unwrap().upload(&stream).unwrap();
    kernels.hook_edits(&stream, &mut dx, (tokens, d), &empty).unwrap();
    assert_eq!(stream.clone_dtoh(&dx).unwrap(), want);
}

#[test]
fn hook_edits_rejects_bad_arguments() {
    let Some((stream, kernels)) = gpu("hook_edits bad arguments") else {
        return;
    };
    let mut list = EditList::new(4, 8).unwrap();
    list.zero(&[3]).unwrap();
    let dev = list.upload(&stream).unwrap();
    let mut short = stream.alloc_zeros::<f32>(31).unwrap();
    assert!(kernels.hook_edits(&stream, &mut short, (4, 8), &dev).is_err());
    let mut x = stream.alloc_zeros::<f32>(64).unwrap();
    // Shape other than the list's.
    assert!(kernels.hook_edits(&stream, &mut x, (8, 8), &dev).is_err());
    assert!(kernels.hook_edits(&stream, &mut x, (4, 16), &dev).is_err());
    let mut xb = stream.alloc_zeros::<bf16>(31).unwrap();
    assert!(kernels.hook_edits_bf16(&stream, &mut xb, (4, 8), &dev).is_err());
    assert!(kernels.hook_edits(&stream, &mut x, (4, 8), &dev).is_ok());
}
