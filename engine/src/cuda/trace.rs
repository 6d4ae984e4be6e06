//! The resident tracer: a chunk's ablations run with everything between the clean source state and the
//! edge statistics on the GPU (ablation → tail → target SAE encode → code sums → edge reduction), and only
//! the statistics come back, once per phase. The plan (passes, rows, slots) and the CPU reference of the
//! whole sequence are in `trace::resident`; `trace::trace_cells` calls this when its `Forward` is a
//! [`CudaForward`] with cuBLASLt.

use std::ops::Range;

use scinterp_kernels::cudarc::driver::CudaSlice;
use scinterp_kernels::gpu::gemm::CublasLt;
use scinterp_kernels::gpu::{take_recorded_error, TraceStats};

use super::forward::{CudaForward, DeviceState, Gemm};
use super::sae::DeviceSaeEncoder;
use super::{driver_error, gpu_error, GpuPrecision};
use crate::encoder::Encoder;
use crate::error::EngineError;
use crate::hooks::HookPlan;
use crate::trace::resident::{self, Pass};
use crate::trace::{Ablation, CleanCell, TraceAccumulator, TraceSetup};

impl CudaForward {
    /// Whether tracing on this GPU runs resident: the target SAEs' encoder GEMMs need cuBLASLt (with the
    /// in-house GEMM fallback, tracing keeps the host loop over `Forward::run`).
    pub fn traces_resident(&self) -> bool {
        self.state
            .lock()
            .is_ok_and(|s| matches!(s.gemm, Gemm::CublasLt(_)))
    }

    /// Runs `ablations` (ordered by cell, then feature, as `trace_cells` builds them) over the chunk's
    /// `clean` runs and adds their edge statistics to `acc`; `progress(ablations done)` after every pass.
    pub(crate) fn trace_resident(
        &self,
        encoder: &dyn Encoder,
        setup: &TraceSetup,
        (clean, ablations): (&[CleanCell], &[Ablation]),
        acc: &mut TraceAccumulator,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), EngineError> {
        if encoder.dims() != &self.dims {
            return Err(EngineError::Gpu(format!(
                "the GPU holds a model of {:?}, but the trace is for {:?}",
                self.dims,
                encoder.dims()
            )));
        }
        let guard = self
            .state
            .lock()
            .map_err(|_| EngineError::Gpu("an earlier GPU run panicked".into()))?;
        let state = &*guard;
        let widths: Vec<usize> = setup.targets.iter().map(|(_, sae)| sae.d_sae).collect();
        let phases = resident::plan(
            clean,
            ablations,
            setup.source_sae.d_sae,
            &setup.null,
            (
                setup.max_batch_tokens,
                resident::slot_bytes(&widths, setup.null.permutations),
                resident::STATS_BUDGET_BYTES,
            ),
        )
        .map_err(gpu_error)?;
        let s = &state.stream;
        let w_dec = s.clone_htod(&setup.source_sae.w_dec).map_err(driver_error)?;
        // Target encodes in exact f32 whatever the forward's precision, as the CPU tracer encodes: by
        // estimate under 1 % of a pass's FLOPs (a few % of its time in f32), and bf16 operands would move
        // top-k near-ties into the edges.
        let targets = setup
            .targets
            .iter()
            .map(|(_, sae)| DeviceSaeEncoder::upload(s, &state.kernels, sae, GpuPrecision::F32))
            .collect::<Result<Vec<_>, _>>()
            .map_err(gpu_error)?;
        let Gemm::CublasLt(lt) = &state.gemm else {
            return Err(EngineError::Gpu("the resident tracer needs cuBLASLt".into()));
        };
        // Blocks after the deepest target change no captured state: the tail stops there.
        let deepest = setup.targets.iter().filter_map(|(h, _)| h.layer()).max();
        let tail = Tail {
            state,
            lt,
            setup,
            layers: setup.source_layer + 1..deepest.map_or(0, |l| l + 1),
            d: self.dims.d_model,
            w_dec: &w_dec,
            targets: &targets,
            plan: HookPlan::new().capture_many(setup.targets.iter().map(|(h, _)| *h)),
        };
        for phase in &phases {
            let mut stats = widths
                .iter()
                .map(|&f| TraceStats::new(s, &phase.features, f, setup.null.permutations))
                .collect::<Result<Vec<_>, _>>()
                .map_err(gpu_error)?;
            // A cell's passes are consecutive: its clean source state is uploaded once per phase.
            let mut source: Option<(usize, CudaSlice<f32>)> = None;
            for pass in &phase.passes {
                let cell = &clean[pass.cell];
                let upload = match source.take() {
                    Some((c, x)) if c == pass.cell => x,
                    _ => s.clone_htod(cell.source_state.as_slice()).map_err(driver_error)?,
                };
                tail.run(cell, pass, &upload, &mut stats)?;
                source = Some((pass.cell, upload));
                acc.ablations += pass.ablations.len() as u64;
                progress(acc.ablations);
            }
            for (t, st) in stats.iter().enumerate() {
                let host = st.download(s).map_err(gpu_error)?;
                acc.merge(resident::to_accumulator(t as u16, &host));
            }
        }
        take_recorded_error(&state.ctx).map_err(gpu_error)?;
        Ok(())
    }
}

/// What every pass of one resident trace shares.
struct Tail<'a> {
    state: &'a DeviceState,
    /// The target encodes' GEMMs.
    lt: &'a CublasLt,
    setup: &'a TraceSetup<'a>,
    /// The blocks each pass runs: after the source, up to the deepest target.
    layers: Range<usize>,
    /// The model's width.
    d: usize,
    /// The source SAE's decoder, `[d_sae, d]` f32.
    w_dec: &'a CudaSlice<f32>,
    targets: &'a [DeviceSaeEncoder],
    plan: HookPlan,
}

impl Tail<'_> {
    /// One pass: the copies, their tail, and per target the encode, the code sums and the reduction
    /// into `stats` (one per target). `source` is the cell's clean source state on the device.
    fn run(
        &self,
        cell: &CleanCell,
        pass: &Pass,
        source: &CudaSlice<f32>,
        stats: &mut [TraceStats],
    ) -> Result<(), EngineError> {
        let (state, s, lt) = (self.state, &self.state.stream, self.lt);
        // Every target's statistics have the phase's slots: one upload serves them all.
        let Some(slots) = stats
            .first()
            .map(|st| st.slots(s, &pass.slots))
            .transpose()
            .map_err(gpu_error)?
        else {
            return Ok(()); // no targets
        };
        let (len, d) = (cell.tokens.len(), self.d);
        let copies = pass.copies();
        let list = pass.list.upload(s).map_err(gpu_error)?;
        let mut x = state.output::<f32>(copies * len * d)?;
        state
            .kernels
            .trace_ablate(s, source, (len, d), self.w_dec, &list, &mut x)
            .map_err(gpu_error)?;
        let batch = cell.copies(copies)?;
        let captured = state.tail_on_device(self.layers.clone(), x, &batch, &self.plan)?;
        let rows = pass.gather_rows.len();
        let n_active = s.clone_htod(&pass.n_active).map_err(driver_error)?;
        let sign_hash = s.clone_htod(&pass.sign_hash).map_err(driver_error)?;
        for (t, ((hook, _), sae)) in self.setup.targets.iter().zip(self.targets).enumerate() {
            let y = captured
                .iter()
                .find(|(h, _)| h == hook)
                .map(|(_, y)| y)
                .ok_or_else(|| EngineError::InvalidStart(format!("{hook} was not captured")))?;
            // Clean rows then ablated rows, encoded in one call (one GEMM configuration for both).
            let mut gathered = state.output::<f32>(rows * d)?;
            state
                .kernels
                .trace_gather_rows(s, y, (copies * len, d), &pass.gather_rows, &mut gathered)
                .map_err(gpu_error)?;
            let (idx, val) = sae
                .encode((s, &state.kernels, lt), &gathered, rows)
                .map_err(gpu_error)?;
            drop(gathered);
            let (clean_rows, ablated_rows) = pass.segments(sae.d_sae).map_err(gpu_error)?;
            let mut clean_sum = state.output::<f32>(pass.lengths.len() * sae.d_sae)?;
            let mut ablated_sum = state.output::<f32>(pass.lengths.len() * sae.d_sae)?;
            for (segments, out) in [(&clean_rows, &mut clean_sum), (&ablated_rows, &mut ablated_sum)] {
                state
                    .kernels
                    .trace_code_sums(s, (&idx, &val, sae.k), segments, out)
                    .map_err(gpu_error)?;
            }
            state
                .kernels
                .trace_reduce(
                    s,
                    &mut stats[t],
                    &clean_sum,
                    &ablated_sum,
                    &n_active,
                    &sign_hash,
                    1,
                    Some(&slots),
                )
                .map_err(gpu_error)?;
        }
        Ok(())
    }
}
