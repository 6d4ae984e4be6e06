//! The registry: every CUDA source file of scinterp and its `extern "C"` entry points.
//!
//! Shared verbatim by the build script (which compiles and embeds every kernel) and the library, so the
//! list exists once. Add a kernel here and its launch wrapper under `gpu/`.

/// One CUDA source file and the `extern "C"` kernels it defines.
#[derive(Debug, Clone, Copy)]
pub struct Kernel {
    /// Registry name (the file stem).
    pub name: &'static str,
    /// The CUDA C++ source.
    pub source: &'static str,
    /// `extern "C" __global__` entry points, unmangled.
    pub entry_points: &'static [&'static str],
}

/// Headers the sources include with `#include "…"`, handed to NVRTC in memory (no include path needed).
pub const HEADERS: &[(&str, &str)] = &[("common.cuh", include_str!("common.cuh"))];

/// Every kernel of scinterp.
pub const KERNELS: &[Kernel] = &[
    Kernel {
        name: "add_layer_norm",
        source: include_str!("add_layer_norm.cu"),
        entry_points: &["add_layer_norm_f32"],
    },
    Kernel {
        name: "bias_relu",
        source: include_str!("bias_relu.cu"),
        entry_points: &["bias_relu_f32"],
    },
    Kernel {
        name: "gemm_bf16",
        source: include_str!("gemm_bf16.cu"),
        entry_points: &["linear_bf16_f32out", "linear_bf16_bf16out"],
    },
    Kernel {
        name: "convert",
        source: include_str!("convert.cu"),
        entry_points: &["f32_to_bf16", "bf16_to_f32", "f32_to_f16", "f16_to_f32"],
    },
    Kernel {
        name: "hook_edits",
        source: include_str!("hook_edits.cu"),
        entry_points: &["hook_edits_f32", "hook_edits_bf16"],
    },
    Kernel {
        name: "trace",
        source: include_str!("trace.cu"),
        entry_points: &[
            "trace_ablate_f32",
            "trace_reduce",
            "trace_gather_rows_f32",
            "trace_code_sums",
        ],
    },
    Kernel {
        name: "sae_topk",
        source: include_str!("sae_topk.cu"),
        entry_points: &["sae_topk_f32", "sae_topk_masked_f32"],
    },
    Kernel {
        name: "sae_sparse",
        source: include_str!("sae_sparse.cu"),
        entry_points: &[
            "sae_decode_f32",
            "sae_decode_bf16",
            "sae_residual_f32",
            "sae_aux_residual_f32",
            "sae_grad_pre_f32",
            "sae_dense_scatter_f32",
            "sae_dense_scatter_bf16",
            "sae_col_sum_f32",
            "sae_col_sum_bf16",
            "sae_grad_b_dec_f32",
            "sae_remove_parallel_grad_f32",
            "sae_renormalise_rows_f32",
            "sae_fire_counters_add",
            "sae_fire_counters_reset",
            "sae_dead_mask",
        ],
    },
    Kernel {
        name: "attention_varlen",
        source: include_str!("attention_varlen.cu"),
        entry_points: &["attention_varlen_bf16", "attention_varlen_f32"],
    },
    Kernel {
        name: "sae_optim",
        source: include_str!("sae_optim.cu"),
        entry_points: &["sub_row_vector_f32", "adam_f32", "sum_squares_f64"],
    },
    Kernel {
        name: "embed_bert",
        source: include_str!("embed_bert.cu"),
        entry_points: &["embed_bert_gather_f32"],
    },
];

/// The kernel registered under `name`.
pub fn kernel(name: &str) -> Option<&'static Kernel> {
    KERNELS.iter().find(|k| k.name == name)
}

/// FNV-1a of a kernel's source and the headers: the build script records it beside each embedded
/// artefact, and the loader refuses an artefact whose source has changed since (a stale build).
pub fn source_hash(kernel: &Kernel) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(kernel.source.as_bytes());
    for (name, text) in HEADERS {
        eat(name.as_bytes());
        eat(text.as_bytes());
    }
    h
}
