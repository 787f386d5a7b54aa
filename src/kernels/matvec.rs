//! The decode mat-vec (`shaders/matvec.wgsl`): `y = W·x` for steps of up to
//! [`MATVEC_MAX_TOKENS`] tokens, bound by the bytes of `W`. Besides the plain product (one
//! matrix, any number of row-range parts) one dispatch can
//! - compute several projections of the same input with different weight types: q, k and v
//!   into one `[T, nq·d + 2·nkv·d]` output ([`Matvec::new`] with up to three slots);
//! - apply the gated activation: `gelu(W_gate·x) ⊙ (W_up·x)` ([`MatvecOut::GeluPair`]) or
//!   `gelu(W·x) ⊙ z` ([`MatvecOut::GeluZ`], Gemma 4's per-layer gate);
//! - compute its own input from the residual stream ([`MatvecIn::Prologue`]): the post-norms and
//!   the next block's input norm of a Gemma layer, recomputed by every workgroup, so they cost no
//!   dispatch of their own.
//!
//! The row length `k`, the rows per workgroup and every loop bound are pipeline constants: one
//! pipeline per (types, shape, variant), a handful per model.

use std::sync::Arc;

use crate::gguf::GgmlType;
use crate::gpu::{grid, BindGroup, GpuContext, Kernel, KernelSpec, Op, StepParams};
use crate::quant::QuantMatrix;
use crate::{Error, Result};

const SOURCE: &str = include_str!("../../shaders/matvec.wgsl");
const ROWS_TEMPLATE: &str = include_str!("../../shaders/matvec_rows.wgsl");
const QUANT_PRELUDE: &str = include_str!("../../shaders/quant/prelude.wgsl");
const QUANT_SLOT: &str = include_str!("../../shaders/quant/slot.wgsl");

/// Up to this many tokens use the mat-vec kernel: a speculative verify step of up to 7 drafts,
/// and short prompts. The mat-mat's 64-row tiles would leave such steps mostly idle (H100, E2B:
/// a 5-token step on them cost 12 decode steps).
pub const MATVEC_MAX_TOKENS: u32 = 8;

/// Tokens of one pass of the several-token mat-vec (`NT` in matvec.wgsl): a step of more runs
/// several passes over each workgroup's rows, the later ones reading them from the cache.
pub const MATVEC_PASS_TOKENS: u32 = 4;

/// Output rows per mat-vec workgroup (`R` in matvec.wgsl: one vec4 of partial sums per token):
/// each activation load serves this many rows.
pub const MATVEC_ROWS: u32 = 4;

/// Invocations (= rows) per workgroup of the one-row-per-invocation mapping.
const LANE_ROWS_WG: u32 = 64;

/// Rows from which a mat-vec runs as many waves of workgroups (see `MatvecShape::wg`).
const MANY_ROWS: u32 = 32768;

/// Most matrices one mat-vec dispatch binds.
pub const MAX_SLOTS: usize = 3;

/// Every type the kernels handle.
pub const TYPES: [GgmlType; 11] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
];

/// Workgroup memory the mat-vec may use (WebGPU's default limit; reduction scratch included).
const WORKGROUP_BYTES: u32 = 16 << 10;

/// Bytes of the residual stream all workgroups of one prologue dispatch may read between
/// them: every workgroup reads `k` floats per input row, so a large matrix gives each
/// workgroup several row groups rather than repeat the prologue thousands of times (H100,
/// E2B Q4_0 decode: 142 tok/s with one group per workgroup, 149 with this budget, 104 with
/// 1 MB).
const PROLOGUE_READ_BUDGET: u64 = 8 << 20;

/// Elements of one mat-vec unit of `ty` (mirrors `UNIT` in `shaders/quant/<type>.wgsl`).
pub fn unit_elems(ty: GgmlType) -> u32 {
    match ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 8,
        _ => 32,
    }
}

/// How a slot's type module names its buffer, its functions and its plane offsets.
pub(crate) struct Slot {
    /// The binding (`wq`, `w0`, …).
    pub buffer: &'static str,
    /// Suffix of the module's names (``, `0`, …).
    pub suffix: &'static str,
    /// WGSL expressions: word offsets of the high-bit and scales planes.
    pub hbase: &'static str,
    pub sbase: &'static str,
}

/// The slot of kernels that bind one matrix as `wq` with `p.hbase` / `p.sbase`.
pub(crate) const SINGLE: Slot = Slot {
    buffer: "wq",
    suffix: "",
    hbase: "p.hbase",
    sbase: "p.sbase",
};

const MATVEC_SLOTS: [Slot; MAX_SLOTS] = [
    Slot {
        buffer: "w0",
        suffix: "0",
        hbase: "p.hbase.x",
        sbase: "p.sbase.x",
    },
    Slot {
        buffer: "w1",
        suffix: "1",
        hbase: "p.hbase.y",
        sbase: "p.sbase.y",
    },
    Slot {
        buffer: "w2",
        suffix: "2",
        hbase: "p.hbase.z",
        sbase: "p.sbase.z",
    },
];

/// The type module of `ty` (`shaders/quant/<type>.wgsl`), unexpanded.
fn type_module(ty: GgmlType) -> &'static str {
    match ty {
        GgmlType::F32 => include_str!("../../shaders/quant/f32.wgsl"),
        GgmlType::F16 => include_str!("../../shaders/quant/f16.wgsl"),
        GgmlType::BF16 => include_str!("../../shaders/quant/bf16.wgsl"),
        GgmlType::Q4_0 => include_str!("../../shaders/quant/q4_0.wgsl"),
        GgmlType::Q4_1 => include_str!("../../shaders/quant/q4_1.wgsl"),
        GgmlType::Q5_0 => include_str!("../../shaders/quant/q5_0.wgsl"),
        GgmlType::Q5_1 => include_str!("../../shaders/quant/q5_1.wgsl"),
        GgmlType::Q8_0 => include_str!("../../shaders/quant/q8_0.wgsl"),
        GgmlType::Q4K => include_str!("../../shaders/quant/q4_k.wgsl"),
        GgmlType::Q5K => include_str!("../../shaders/quant/q5_k.wgsl"),
        GgmlType::Q6K => include_str!("../../shaders/quant/q6_k.wgsl"),
        _ => unreachable!("QuantMatrix only holds supported types"),
    }
}

fn expand_slot(text: &str, slot: &Slot) -> String {
    // Longest markers first (`$SBASE` before `$S`).
    text.replace("$HBASE", slot.hbase)
        .replace("$SBASE", slot.sbase)
        .replace("$W", slot.buffer)
        .replace("$S", slot.suffix)
}

/// The WGSL inserted at a kernel's `{{QUANT}}` line for matrices of `types` bound as `slots`:
/// the shared prelude, then each slot's accessors and type module.
pub(crate) fn quant_wgsl(types: &[GgmlType], slots: &[Slot]) -> String {
    let mut out = String::from(QUANT_PRELUDE);
    for (&ty, slot) in types.iter().zip(slots) {
        out.push('\n');
        out.push_str(&expand_slot(QUANT_SLOT, slot));
        out.push('\n');
        out.push_str(&expand_slot(type_module(ty), slot));
    }
    out
}

fn lower(ty: GgmlType) -> String {
    ty.name().to_lowercase()
}

/// What the mat-vec writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatvecOut {
    /// `y = W·x`
    Store,
    /// `y += W·x`
    Accumulate,
    /// `y = gelu_tanh(W0·x) ⊙ (W1·x)`: two slots of equal shape, gate then up.
    GeluPair,
    /// `y[t, r] = gelu_tanh(W·x)[t, r] · z[t·z_stride + z_offset + r]`.
    GeluZ,
}

/// A term `rms(o)·w` of a prologue: `o`'s row at `offset` elements from h's row in the arena,
/// and its norm weight at `weight` elements into the norm-weight buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NormTerm {
    pub offset: u32,
    pub weight: u32,
}

/// How the mat-vec gets its input vector.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MatvecIn {
    /// `x[t]` at element `offset + t·stride` of the input buffer (`stride`: `k` when `None`).
    Buffer { offset: u32, stride: Option<u32> },
    /// One token: `x = h + Σ rms(o_i)·w_i` over `terms` (at most two), then `rms(x)·w_n` when
    /// `norm` is set, where `h` is the row at element `h` of the residual arena (the input
    /// buffer).
    Prologue {
        h: u32,
        terms: [Option<NormTerm>; 2],
        norm: Option<u32>,
        eps: f32,
    },
}

/// Everything that selects a mat-vec pipeline.
#[derive(Clone, Debug, PartialEq)]
pub struct MatvecShape {
    /// Weight type of each bound matrix (1 to 3).
    pub types: Vec<GgmlType>,
    /// Row length.
    pub k: u32,
    /// Rows of slots 0 and 1 (multi-slot dispatches; 0 otherwise).
    pub n0: u32,
    pub n1: u32,
    /// Most tokens per step: 1, or [`MATVEC_MAX_TOKENS`] (never with a prologue), in passes of
    /// [`MATVEC_PASS_TOKENS`].
    pub nt: u32,
    pub out: MatvecOut,
    /// Prologue: (terms, final norm); `None` reads a buffer.
    pub prologue: Option<(u32, bool)>,
    /// Rounds of row groups per workgroup (each lane group computes one group of 4 output rows
    /// per round).
    pub groups: u32,
    /// Lane groups of a workgroup: row groups computed at once (several only with a prologue).
    pub lane_groups: u32,
    /// Rows of the largest bound matrix (the dispatch's size picks the workgroup size).
    pub rows: u32,
    /// One row per invocation (`Caps::matvec_lane_rows`).
    pub lane_rows: bool,
}

impl MatvecShape {
    /// Tokens of one pass.
    fn pass_tokens(&self) -> u32 {
        self.nt.min(MATVEC_PASS_TOKENS)
    }

    /// Partial sums per invocation.
    fn nv(&self) -> u32 {
        let rows = if self.out == MatvecOut::GeluPair {
            2 * MATVEC_ROWS
        } else {
            MATVEC_ROWS
        };
        rows * self.pass_tokens()
    }

    fn unit(&self) -> u32 {
        unit_elems(self.types[0])
    }

    /// Output rows of one group of a workgroup.
    fn group_rows(&self) -> u32 {
        if self.lane_rows {
            LANE_ROWS_WG
        } else {
            MATVEC_ROWS
        }
    }

    /// Invocations per workgroup.
    fn wg(&self) -> u32 {
        if self.lane_rows {
            LANE_ROWS_WG
        } else {
            self.lane_group() * self.lane_groups
        }
    }

    /// Invocations per lane group: enough to take each unit of a row in one pass where that
    /// fits (a power of two from 32 to 256), which keeps a dispatch short when the next one
    /// waits for it; for a matrix with more rows than a GPU holds workgroups at once (an LM
    /// head: many waves) the narrowest, so each workgroup has several units in flight (H100,
    /// E2B's 262144-row head in Q4_0: 193 µs at 32, 233 at 64, 332 at 128); within the
    /// workgroup memory the reduction and the prologue's vector leave.
    fn lane_group(&self) -> u32 {
        let units = self.k / self.unit();
        let mut wg = if self.rows >= MANY_ROWS {
            32
        } else {
            units.next_power_of_two().clamp(32, 256)
        };
        while wg > 32 && self.workgroup_bytes(wg) > WORKGROUP_BYTES {
            wg /= 2;
        }
        wg
    }

    /// Workgroup memory at `wg` invocations: the reduction's NV·WG floats (the prologue's
    /// sums reuse them) and the prologue's vector.
    fn workgroup_bytes(&self, wg: u32) -> u32 {
        let vector = if self.prologue.is_some() {
            self.k * 4
        } else {
            0
        };
        self.nv() * wg * 4 + vector
    }

    /// Splits `groups` row groups per workgroup into lane groups computed at once and rounds
    /// computed one after another: as many lane groups as fit in 256 invocations and the
    /// workgroup memory (each round costs a memory latency; H100, E2B's FFN gate/up ran 3–5
    /// rounds one group at a time). Several lane groups only where each holds whole
    /// subgroups of up to `subgroup_max` invocations.
    fn with_lane_groups(mut self, groups: u32, subgroup_max: u32) -> Self {
        self.lane_groups = 1;
        if !self.lane_rows && self.lane_group() >= subgroup_max {
            let lg = self.lane_group();
            let mut gc = 1;
            while gc * 2 <= groups
                && lg * gc * 2 <= 256
                && self.workgroup_bytes(lg * gc * 2) <= WORKGROUP_BYTES
            {
                gc *= 2;
            }
            self.lane_groups = gc;
        }
        self.groups = groups.div_ceil(self.lane_groups);
        self
    }

    /// Output rows of one workgroup.
    fn workgroup_rows(&self) -> u32 {
        self.group_rows() * self.groups * self.lane_groups
    }

    fn spec(&self) -> KernelSpec {
        let slots = self.types.len();
        let names: Vec<String> = self.types.iter().map(|&t| lower(t)).collect();
        let out = match self.out {
            MatvecOut::Store => "",
            MatvecOut::Accumulate => "_acc",
            MatvecOut::GeluPair => "_gelu_pair",
            MatvecOut::GeluZ => "_gelu_z",
        };
        let pro = match self.prologue {
            None => String::new(),
            Some((terms, norm)) => {
                format!(
                    "_pro{terms}{}_g{}x{}",
                    if norm { "n" } else { "" },
                    self.groups,
                    self.lane_groups
                )
            }
        };
        let wg = self.wg();
        let rows: String = MATVEC_SLOTS[..slots]
            .iter()
            .map(|slot| expand_slot(ROWS_TEMPLATE, slot))
            .collect::<Vec<_>>()
            .join("\n");
        let (terms, norm) = self.prologue.unwrap_or((0, false));
        KernelSpec::new(
            format!(
                "matvec_{}_k{}_nt{}_wg{wg}{}{out}{pro}",
                names.join("_"),
                self.k,
                self.nt,
                if self.lane_rows { "_lanes" } else { "" }
            ),
            SOURCE,
        )
        .define("K", self.k)
        .define("UNIT", self.unit())
        .define("WG", wg)
        .define("NT", self.pass_tokens())
        .define("PASSES", self.nt.div_ceil(self.pass_tokens()))
        .define("G", self.groups)
        .define("GC", self.lane_groups)
        .define("N0", self.n0)
        .define("N1", self.n1)
        .define("QUANT", quant_wgsl(&self.types, &MATVEC_SLOTS[..slots]))
        .define("ROWS", rows)
        .flag("UNIT32", self.unit() == 32)
        .flag("LANE_ROWS", self.lane_rows)
        .flag("NT4", self.pass_tokens() > 1)
        .flag("SLOT1", slots > 1)
        .flag("SLOT2", slots > 2)
        .flag("PAIR", self.out == MatvecOut::GeluPair)
        .flag("ACC", self.out == MatvecOut::Accumulate)
        .flag("GELU_Z", self.out == MatvecOut::GeluZ)
        .flag("PRO", self.prologue.is_some())
        .flag("PRO_T1", terms >= 1)
        .flag("PRO_T2", terms >= 2)
        .flag("PRO_NORM", norm)
    }
}

/// Kernel specs covering every type, token count and output mode on a small row length, in
/// both row mappings (shader validation; the model builds the shapes it needs).
pub fn specs() -> Vec<KernelSpec> {
    let shapes = cooperative_shapes();
    let lanes = shapes.iter().map(|s| MatvecShape {
        lane_rows: true,
        lane_groups: 1,
        ..s.clone()
    });
    shapes
        .iter()
        .cloned()
        .chain(lanes)
        .map(|s| s.spec())
        .collect()
}

fn cooperative_shapes() -> Vec<MatvecShape> {
    let mut v = Vec::new();
    for ty in TYPES {
        let k = 256;
        for nt in [1, MATVEC_MAX_TOKENS] {
            for out in [MatvecOut::Store, MatvecOut::Accumulate, MatvecOut::GeluZ] {
                v.push(MatvecShape {
                    types: vec![ty],
                    k,
                    n0: 0,
                    n1: 0,
                    nt,
                    out,
                    prologue: None,
                    groups: 1,
                    lane_groups: 1,
                    rows: 64,
                    lane_rows: false,
                });
            }
        }
        v.push(MatvecShape {
            types: vec![ty, ty],
            k,
            n0: 0,
            n1: 0,
            nt: 1,
            out: MatvecOut::GeluPair,
            prologue: Some((1, true)),
            groups: 2,
            lane_groups: 2,
            rows: 64,
            lane_rows: false,
        });
    }
    // Mixed types in one dispatch (a Q4_K_M q/k/v), and the other prologues.
    v.push(MatvecShape {
        types: vec![GgmlType::Q4K, GgmlType::Q5_0, GgmlType::Q6K],
        k: 256,
        n0: 8,
        n1: 8,
        nt: MATVEC_MAX_TOKENS,
        out: MatvecOut::Store,
        prologue: None,
        groups: 1,
        lane_groups: 1,
        rows: 64,
        lane_rows: false,
    });
    for prologue in [(2, false), (0, true)] {
        v.push(MatvecShape {
            types: vec![GgmlType::Q8_0],
            k: 256,
            n0: 0,
            n1: 0,
            nt: 1,
            out: MatvecOut::GeluZ,
            prologue: Some(prologue),
            groups: 1,
            lane_groups: 1,
            rows: MANY_ROWS,
            lane_rows: false,
        });
    }
    v
}

/// Mirrors `struct Params` in matvec.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    y_stride: u32,
    y_offset: u32,
    x_offset: u32,
    x_stride: u32,
    z_stride: u32,
    z_offset: u32,
    eps: f32,
    hbase: [u32; 4],
    sbase: [u32; 4],
    pro_o1: u32,
    pro_o2: u32,
    pro_w1: u32,
    pro_w2: u32,
    pro_wn: u32,
    _pad: [u32; 3],
}

/// Buffers a [`Matvec`] reads and writes.
pub struct MatvecIo<'a> {
    /// `[T, ·]` f32 input (the residual arena with a prologue)
    pub x: wgpu::BindingResource<'a>,
    /// Norm weights of a prologue (`[·]` f32; each weight `k` elements at a multiple of 4).
    pub norms: Option<wgpu::BindingResource<'a>>,
    /// `[T, y_stride]` f32 output (aliases no input)
    pub y: wgpu::BindingResource<'a>,
    /// Element of `y[0, 0]` and elements between tokens.
    pub y_offset: u32,
    pub y_stride: u32,
    /// [`MatvecOut::GeluZ`]: `[T, z_stride]` f32 factors, row `r` of token `t` at
    /// `t·z_stride + z_offset + r`.
    pub z: Option<(wgpu::BindingResource<'a>, u32, u32)>,
    /// the step parameters (`gpu::StepParams`)
    pub step: wgpu::BindingResource<'a>,
}

/// One dispatch per part of a single matrix, or one for several matrices.
struct Part {
    rows: u32,
    bind_group: BindGroup,
    _params: wgpu::Buffer,
}

/// A decode mat-vec built once: pipeline, parameters, bind groups.
pub struct Matvec {
    kernel: Arc<Kernel>,
    parts: Vec<Part>,
    nt: u32,
    /// Output rows per workgroup.
    rows_per_workgroup: u32,
    max_per_dim: u32,
}

impl Matvec {
    /// `slots`: the matrices (1 to 3; several only as whole single-part matrices of one row
    /// length, and for [`MatvecOut::GeluPair`] exactly two of equal shape). Rows of slot `i`
    /// land after those of the slots before it. `nt`: most tokens per step.
    pub fn new(
        ctx: &GpuContext,
        slots: &[&QuantMatrix],
        input: MatvecIn,
        out: MatvecOut,
        nt: u32,
        io: MatvecIo<'_>,
    ) -> Result<Self> {
        // Lane groups must hold whole subgroups (the subgroup reduction sums within one).
        let subgroup_max = if ctx.caps.subgroups {
            ctx.caps.subgroup_max_size
        } else {
            1
        };
        let shape = Self::shape(
            slots,
            input,
            out,
            nt,
            ctx.caps.matvec_lane_rows,
            subgroup_max,
        )?;
        let kernel = ctx.kernel(&shape.spec())?;
        let k = shape.k;
        let mut base = Params {
            y_stride: io.y_stride,
            y_offset: io.y_offset,
            ..Default::default()
        };
        match input {
            MatvecIn::Buffer { offset, stride } => {
                base.x_offset = offset / 4;
                base.x_stride = stride.unwrap_or(k) / 4;
            }
            MatvecIn::Prologue {
                h,
                terms,
                norm,
                eps,
            } => {
                base.x_offset = h / 4;
                base.eps = eps;
                if let Some(t) = terms[0] {
                    (base.pro_o1, base.pro_w1) = (t.offset / 4, t.weight / 4);
                }
                if let Some(t) = terms[1] {
                    (base.pro_o2, base.pro_w2) = (t.offset / 4, t.weight / 4);
                }
                base.pro_wn = norm.unwrap_or(0) / 4;
            }
        }
        if let Some((_, stride, offset)) = &io.z {
            (base.z_stride, base.z_offset) = (*stride, *offset);
        }
        let bind = |params: &wgpu::Buffer, weights: &[&wgpu::Buffer]| {
            let mut entries: Vec<(u32, wgpu::BindingResource<'_>)> = weights
                .iter()
                .enumerate()
                .map(|(i, b)| (i as u32, b.as_entire_binding()))
                .collect();
            entries.push((3, io.x.clone()));
            if let Some(n) = &io.norms {
                entries.push((4, n.clone()));
            }
            entries.push((5, io.y.clone()));
            entries.push((6, params.as_entire_binding()));
            entries.push((7, io.step.clone()));
            if let Some((z, _, _)) = &io.z {
                entries.push((8, z.clone()));
            }
            ctx.bind_at(&kernel, &entries)
        };
        let parts = if slots.len() == 1 {
            slots[0]
                .parts
                .iter()
                .map(|part| {
                    let mut p = base;
                    p.rows = part.rows;
                    p.y_offset = io.y_offset + part.row0;
                    p.z_offset = base.z_offset + part.row0;
                    p.hbase[0] = part.hbase;
                    p.sbase[0] = part.sbase;
                    let params = ctx.params_init("matvec.params", &p);
                    Part {
                        rows: part.rows,
                        bind_group: bind(&params, &[&part.buffer]),
                        _params: params,
                    }
                })
                .collect()
        } else {
            let mut p = base;
            p.rows = if out == MatvecOut::GeluPair {
                slots[0].n
            } else {
                slots.iter().map(|m| m.n).sum()
            };
            for (i, m) in slots.iter().enumerate() {
                p.hbase[i] = m.parts[0].hbase;
                p.sbase[i] = m.parts[0].sbase;
            }
            let params = ctx.params_init("matvec.params", &p);
            let buffers: Vec<&wgpu::Buffer> = slots.iter().map(|m| &m.parts[0].buffer).collect();
            vec![Part {
                rows: p.rows,
                bind_group: bind(&params, &buffers),
                _params: params,
            }]
        };
        Ok(Self {
            kernel,
            parts,
            nt: shape.nt,
            rows_per_workgroup: shape.workgroup_rows(),
            max_per_dim: ctx.caps.max_workgroups_per_dim,
        })
    }

    /// Whether `slots` can run as one dispatch with this input and output (else the caller
    /// runs them as separate mat-vecs).
    pub fn fuses(slots: &[&QuantMatrix], input: MatvecIn, out: MatvecOut) -> bool {
        Self::shape(slots, input, out, 1, false, 1).is_ok()
    }

    /// `nt`: 1, or up to [`MATVEC_MAX_TOKENS`] (one pipeline serves 2 to 8 tokens);
    /// `subgroup_max`: the largest subgroup the kernel may run in (1 without subgroups).
    fn shape(
        slots: &[&QuantMatrix],
        input: MatvecIn,
        out: MatvecOut,
        nt: u32,
        lane_rows: bool,
        subgroup_max: u32,
    ) -> Result<MatvecShape> {
        let bad = |m: String| Err(Error::InvalidArgument(format!("mat-vec: {m}")));
        let Some(first) = slots.first() else {
            return bad("no matrix".into());
        };
        if slots.len() > MAX_SLOTS {
            return bad(format!("{} matrices in one dispatch", slots.len()));
        }
        let k = first.k;
        let unit = unit_elems(first.ty());
        if k % unit != 0 {
            return bad(format!(
                "`{}`: row length {k} is not a multiple of the {unit}-element unit",
                first.name
            ));
        }
        if slots.len() > 1 {
            for m in slots {
                if m.k != k || unit_elems(m.ty()) != unit || m.parts.len() != 1 {
                    return bad(format!(
                        "`{}` cannot share a dispatch with `{}`",
                        m.name, first.name
                    ));
                }
            }
            // A workgroup's rows must lie in one slot.
            let head = &slots[..slots.len() - 1];
            if out != MatvecOut::GeluPair && head.iter().any(|m| m.n % MATVEC_ROWS != 0) {
                return bad("slot rows are not a multiple of the workgroup's rows".into());
            }
        }
        if out == MatvecOut::GeluPair && !(slots.len() == 2 && slots[0].n == slots[1].n) {
            return bad("a gate/up pair needs two matrices of equal shape".into());
        }
        let offsets = match input {
            MatvecIn::Buffer { offset, stride } => [offset, stride.unwrap_or(k)],
            MatvecIn::Prologue { h, .. } => [h, 0],
        };
        if offsets.iter().any(|o| o % 4 != 0) {
            return bad(format!(
                "input offsets {offsets:?} are not multiples of 4 elements"
            ));
        }
        let prologue = match input {
            MatvecIn::Buffer { .. } => None,
            MatvecIn::Prologue { terms, norm, .. } => {
                let n = terms.iter().take_while(|t| t.is_some()).count() as u32;
                if terms[..n as usize].len() != terms.iter().filter(|t| t.is_some()).count() {
                    return bad("prologue terms must come first".into());
                }
                // The vector and the smallest reduction (32 invocations, 8 partial sums).
                if k % 4 != 0 || k * 4 + 32 * 8 * 4 > WORKGROUP_BYTES {
                    return bad(format!("no prologue for rows of {k} elements"));
                }
                Some((n, norm.is_some()))
            }
        };
        let nt = if prologue.is_some() { 1 } else { nt };
        if nt == 0 || nt > MATVEC_MAX_TOKENS {
            return bad(format!("{nt} tokens per step"));
        }
        let n = |i: usize| match out {
            MatvecOut::GeluPair => 0,
            _ if slots.len() > i + 1 => slots[i].n,
            _ => 0,
        };
        let rows = slots.iter().map(|m| m.n).max().unwrap_or(0);
        let group_rows = if lane_rows { LANE_ROWS_WG } else { MATVEC_ROWS };
        // Row groups per workgroup: one, or with a prologue enough that all workgroups
        // together read at most PROLOGUE_READ_BUDGET bytes of the residual stream.
        let groups = match prologue {
            None => 1,
            Some((terms, _)) => {
                let per_workgroup = k as u64 * 4 * (terms as u64 + 1);
                let workgroups = (PROLOGUE_READ_BUDGET / per_workgroup).max(1);
                (rows.div_ceil(group_rows) as u64).div_ceil(workgroups) as u32
            }
        };
        Ok(MatvecShape {
            types: slots.iter().map(|m| m.ty()).collect(),
            k,
            n0: n(0),
            n1: n(1),
            nt: if nt > 1 { MATVEC_MAX_TOKENS } else { 1 },
            out,
            prologue,
            groups: 1,
            lane_groups: 1,
            rows,
            lane_rows,
        }
        .with_lane_groups(groups, subgroup_max))
    }

    /// Most tokens of a step this op runs.
    pub fn max_tokens(&self) -> u32 {
        self.nt
    }
}

impl Op for Matvec {
    fn encode(&self, pass: &mut wgpu::ComputePass<'_>, step: &StepParams) {
        if step.n_tokens == 0 {
            return;
        }
        debug_assert!(step.n_tokens <= self.nt || self.nt == 1);
        pass.set_pipeline(self.kernel.pipeline());
        for part in &self.parts {
            pass.set_bind_group(0, part.bind_group.get(), &[]);
            crate::gpu::dispatch(
                pass,
                grid(
                    part.rows.div_ceil(self.rows_per_workgroup),
                    self.max_per_dim,
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prologue_pair(k: u32, rows: u32, groups: u32) -> MatvecShape {
        MatvecShape {
            types: vec![GgmlType::Q4_0, GgmlType::Q4_0],
            k,
            n0: 0,
            n1: 0,
            nt: 1,
            out: MatvecOut::GeluPair,
            prologue: Some((1, true)),
            groups: 1,
            lane_groups: 1,
            rows,
            lane_rows: false,
        }
        .with_lane_groups(groups, 32)
    }

    /// Row groups are computed by as many lane groups at once as the workgroup holds, within
    /// 256 invocations and WebGPU's 16 KiB of workgroup memory.
    #[test]
    fn lane_groups_fill_the_workgroup() {
        // Gemma 4 E2B's FFN gate/up (k = 1536, 48 units: lane groups of 64), 5 groups.
        let s = prologue_pair(1536, 12288, 5);
        assert_eq!((s.lane_group(), s.lane_groups, s.groups), (64, 4, 2));
        assert_eq!(s.wg(), 256);
        assert!(s.workgroup_bytes(s.wg()) <= WORKGROUP_BYTES);
        assert_eq!(s.workgroup_rows(), 2 * 4 * 4);
        // E4B (k = 2560: lane groups of 128): the 10 KiB vector leaves no room for a second
        // lane group's 4 KiB of partial sums.
        let s = prologue_pair(2560, 20480, 3);
        assert_eq!((s.lane_group(), s.lane_groups, s.groups), (128, 1, 3));
        assert!(s.workgroup_bytes(s.wg()) <= WORKGROUP_BYTES);
        // One group: one lane group.
        let s = prologue_pair(1536, 256, 1);
        assert_eq!((s.lane_groups, s.groups), (1, 1));
        // The one-row-per-invocation mapping has no lane groups.
        let s = MatvecShape {
            lane_rows: true,
            ..prologue_pair(1536, 12288, 1)
        }
        .with_lane_groups(5, 32);
        assert_eq!((s.lane_groups, s.groups, s.wg()), (1, 5, LANE_ROWS_WG));
        // Subgroups larger than a lane group (Adreno's 128): one lane group.
        let s = prologue_pair(1536, 256, 1).with_lane_groups(5, 128);
        assert_eq!((s.lane_groups, s.groups), (1, 5));
    }
}
