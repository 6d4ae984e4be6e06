//! hook_edits_f32 / hook_edits_bf16 against `Edit::apply` in sequence (bit for bit).

use crate::common::*;
use scinterp_engine::{Edit, Matrix};
use scinterp_kernels_emu::{Arg, Program};

const ADD: u32 = 0;
const ZERO: u32 = 1;
const REPLACE: u32 = 2;
const MEAN: u32 = 3;

/// The kernel's edit list, as the wrapper builds it: one record {row, op, scale bits, pool offset} per
/// edited row, stably sorted by row, one segment per distinct row.
fn records(edits: &[Edit], d: usize) -> (Vec<[u32; 4]>, Vec<u32>, Vec<f32>) {
    let mut pool = Vec::new();
    let mut recs: Vec<[u32; 4]> = Vec::new();
    for e in edits {
        match e {
            Edit::AddDirection {
                rows,
                direction,
                scales,
            } => {
                let at = pool.len() as u32;
                pool.extend(direction);
                for (&r, &s) in rows.iter().zip(scales) {
                    recs.push([r as u32, ADD, s.to_bits(), at]);
                }
            }
            Edit::Zero { rows } => rows.iter().for_each(|&r| recs.push([r as u32, ZERO, 0, 0])),
            Edit::Replace { rows, values } => {
                for (i, &r) in rows.iter().enumerate() {
                    recs.push([r as u32, REPLACE, 0, pool.len() as u32]);
                    pool.extend(&values[i * d..(i + 1) * d]);
                }
            }
            Edit::MeanAblate { rows, mean } => {
                let at = pool.len() as u32;
                pool.extend(mean);
                rows.iter().for_each(|&r| recs.push([r as u32, MEAN, 0, at]));
            }
        }
    }
    recs.sort_by_key(|r| r[0]);
    let mut segments = vec![0u32];
    for i in 1..recs.len() {
        if recs[i][0] != recs[i - 1][0] {
            segments.push(i as u32);
        }
    }
    segments.push(recs.len() as u32);
    if recs.is_empty() {
        segments = vec![0];
    }
    (recs, segments, pool)
}

#[test]
fn hook_edits_apply_every_kind_in_list_order_bit_for_bit() {
    let mut g = Gen::new(41);
    let (tokens, d) = (9usize, 70usize);
    let x = g.vec(tokens * d, -2.0, 2.0);
    let edits = vec![
        Edit::AddDirection {
            rows: vec![1, 3, 3, 8],
            direction: g.vec(d, -1.0, 1.0),
            scales: vec![0.5, -1.25, 2.0, 0.1],
        },
        Edit::Zero { rows: vec![2, 5] },
        Edit::add_direction(vec![2, 4], g.vec(d, -1.0, 1.0), 0.75),
        Edit::Replace {
            rows: vec![6, 4],
            values: g.vec(2 * d, -3.0, 3.0),
        },
        Edit::MeanAblate {
            rows: vec![7],
            mean: g.vec(d, -1.0, 1.0),
        },
        Edit::add_direction(vec![7, 6, 0], g.vec(d, -1.0, 1.0), -0.3),
    ];
    let (recs, segments, pool) = records(&edits, d);
    let n_segments = segments.len() - 1;

    for bf16 in [false, true] {
        let start = if bf16 { bf16_round(&x) } else { x.clone() };
        let mut p = Program::new();
        let xb = if bf16 {
            p.upload(&to_bf16_bits(&start))
        } else {
            p.upload(&start)
        };
        let (rb, sb, pb) = (p.upload(&recs), p.upload(&segments), p.upload(&pool));
        p.launch(
            if bf16 { "hook_edits_bf16" } else { "hook_edits_f32" },
            (n_segments as u32, 1, 1),
            ((d.div_ceil(32).clamp(1, 8) * 32) as u32, 1, 1),
            0,
            &[
                Arg::Buf(xb),
                Arg::I32(tokens as i32),
                Arg::I32(d as i32),
                Arg::Buf(rb),
                Arg::Buf(sb),
                Arg::I32(n_segments as i32),
                Arg::Buf(pb),
            ],
        );
        let mem = p.run().unwrap();
        let mut want = Matrix::from_vec(tokens, d, start);
        for e in &edits {
            e.apply(&mut want);
        }
        if bf16 {
            assert_bits_eq(
                "hook_edits_bf16",
                &from_bf16_bits(&mem.read::<u16>(xb)),
                &bf16_round(want.as_slice()),
            );
        } else {
            assert_bits_eq("hook_edits_f32", &mem.read::<f32>(xb), want.as_slice());
        }
    }
}
