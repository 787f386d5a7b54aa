//! Loading the weights: matrices streamed to the GPU in row chunks in the repacked layout,
//! every norm weight packed into one table buffer, the few values kept on the host (RoPE
//! frequency factors, layer scalars), and the record of where each group of tensors went.

use std::collections::HashMap;

use super::plan::{check_finite, tensor_error, tensor_group, Placement, TensorPlan};
use super::MemoryReport;
use crate::gguf::{read_tensor_data, Gguf, TensorInfo, TensorSource};
use crate::gpu::GpuContext;
use crate::quant::QuantMatrix;
use crate::{Error, Result};

/// GGUF bytes read per chunk while uploading a matrix: bounds the loader's memory (what a
/// browser tab holds while a model streams in) independently of the largest tensor.
const UPLOAD_CHUNK_BYTES: u64 = 4 << 20;

/// Alignment of each weight in the norm table: the largest storage-binding offset alignment
/// WebGPU allows, so any one weight can also be bound on its own as a slice.
const NORM_ALIGN: u64 = 256;

/// Every norm weight of the model in one GPU buffer (`[f32]`, each weight at a multiple of
/// [`NORM_ALIGN`] bytes): the fused kernels that apply several norms in one dispatch read them
/// all through one binding (WebGPU allows a kernel 8 storage buffers).
pub(super) struct NormTable {
    buffer: wgpu::Buffer,
    /// Tensor name → (element offset, elements).
    slots: HashMap<String, (u32, u32)>,
}

impl NormTable {
    /// Bytes `info`'s weight takes in the table.
    pub(super) fn slot_bytes(info: &TensorInfo) -> u64 {
        (info.n_elements() * 4).next_multiple_of(NORM_ALIGN)
    }

    fn new(ctx: &GpuContext, weights: &[(String, Vec<f32>)]) -> Result<Self> {
        let align = (NORM_ALIGN / 4) as usize;
        let mut data: Vec<f32> = Vec::new();
        let mut slots = HashMap::new();
        for (name, values) in weights {
            slots.insert(name.clone(), (data.len() as u32, values.len() as u32));
            data.extend_from_slice(values);
            data.resize(data.len().next_multiple_of(align), 0.0);
        }
        if data.is_empty() {
            data.push(0.0);
        }
        Ok(Self {
            buffer: ctx.storage_init("norm table", &data)?,
            slots,
        })
    }

    /// Element offset of the weight `name`.
    pub(super) fn offset(&self, name: &str) -> Result<u32> {
        self.slots
            .get(name)
            .map(|&(at, _)| at)
            .ok_or_else(|| Error::MissingTensor(name.to_string()))
    }

    /// The weight `name` alone, as a binding.
    pub(super) fn binding(&self, name: &str) -> Result<wgpu::BindingResource<'_>> {
        let &(at, len) = self
            .slots
            .get(name)
            .ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        Ok(wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.buffer,
            offset: at as u64 * 4,
            size: std::num::NonZeroU64::new(len as u64 * 4),
        }))
    }

    /// The whole table, as a binding.
    pub(super) fn all(&self) -> wgpu::BindingResource<'_> {
        self.buffer.as_entire_binding()
    }

    pub(super) fn bytes(&self) -> u64 {
        self.buffer.size()
    }
}

/// A model's weights once loaded.
pub(super) struct Weights {
    pub matrices: HashMap<String, QuantMatrix>,
    pub norms: NormTable,
    /// RoPE frequency factors and layer scalars.
    pub host: HashMap<String, Vec<f32>>,
    pub memory: MemoryReport,
}

impl Weights {
    pub(super) fn matrix(&self, name: &str) -> Result<&QuantMatrix> {
        self.matrices
            .get(name)
            .ok_or_else(|| Error::MissingTensor(name.to_string()))
    }
}

/// Streams one matrix from `src` to the GPU in row chunks; `progress(bytes)` after each chunk.
async fn upload_matrix<S: TensorSource>(
    ctx: &GpuContext,
    src: &mut S,
    info: &TensorInfo,
    progress: &mut impl FnMut(u64),
) -> Result<QuantMatrix> {
    let (k, n) = (info.dims[0] as u32, info.dims[1] as u32);
    let mut up = crate::quant::MatrixUpload::new(ctx, &info.name, info.ty, k, n)?;
    up.check_len(info.n_bytes)?;
    let rb = up.row_bytes();
    let step = up.chunk_rows(UPLOAD_CHUNK_BYTES);
    let mut buf = Vec::new();
    let mut row = 0u32;
    while row < n {
        let rows = step.min(n - row);
        buf.resize((rows as u64 * rb) as usize, 0);
        src.read_at(info.offset + row as u64 * rb, &mut buf).await?;
        up.write_rows(ctx, row, &buf)?;
        row += rows;
        progress(row as u64 * rb);
    }
    // Hand the staged writes to the GPU now, so staging memory never holds more than a tensor.
    ctx.submit([]);
    up.finish()
}

/// Reads every tensor `wanted` names from `src`, in file order (a streaming source works), to
/// where the plan puts it. `progress(done, total)` after each tensor and matrix chunk.
pub(super) async fn upload<S: TensorSource>(
    ctx: &GpuContext,
    gguf: &Gguf,
    src: &mut S,
    wanted: &TensorPlan,
    mut progress: impl FnMut(u64, u64),
) -> Result<Weights> {
    let mut memory = MemoryReport {
        file_tensor_bytes: gguf.tensor_data_bytes(),
        ..Default::default()
    };
    let mut infos: Vec<&TensorInfo> = gguf.tensors_by_offset();
    infos.sort_by_key(|t| t.offset);
    let total: u64 = infos
        .iter()
        .filter(|t| matches!(wanted.get(&t.name), Some((_, at)) if *at != Placement::Mapped))
        .map(|t| t.n_bytes)
        .sum();
    let mut done = 0;
    let mut matrices = HashMap::new();
    let mut host: HashMap<String, Vec<f32>> = HashMap::new();
    let mut norms: Vec<(String, Vec<f32>)> = Vec::new();
    for info in infos {
        let group = tensor_group(&info.name);
        let placement = wanted.get(&info.name).map(|(_, p)| *p);
        {
            let g = memory.group(group);
            g.tensors += 1;
            g.file_bytes += info.n_bytes;
        }
        match placement {
            None => continue,
            Some(Placement::Mapped) => {
                memory.group(group).mapped_bytes += info.n_bytes;
                memory.mapped += info.n_bytes;
                continue;
            }
            Some(Placement::Gpu) => {
                let m = upload_matrix(ctx, src, info, &mut |bytes| progress(done + bytes, total))
                    .await?;
                memory.largest_buffer = memory.largest_buffer.max(m.largest_buffer_bytes());
                memory.weights += m.gpu_bytes();
                memory.group(group).gpu_bytes += m.gpu_bytes();
                matrices.insert(info.name.clone(), m);
            }
            Some(at @ (Placement::Norm | Placement::Host)) => {
                let bytes = read_tensor_data(src, info).await?;
                // Norm weights and scales: small, and one NaN or infinity among them turns
                // every logit into NaN, so they are checked (matrices are not scanned; a
                // non-finite logit is caught when the step's candidates are read back).
                let values = crate::quant::dequantize(info.ty, &bytes, info.n_elements() as usize)
                    .map_err(|e| tensor_error(info, e))?;
                check_finite(info, &values)?;
                if at == Placement::Norm {
                    memory.group(group).gpu_bytes += NormTable::slot_bytes(info);
                    norms.push((info.name.clone(), values));
                } else {
                    host.insert(info.name.clone(), values);
                }
            }
        }
        done += info.n_bytes;
        progress(done, total);
    }
    let norms = NormTable::new(ctx, &norms)?;
    // Flush the table's staging copy now, as each matrix's were: a load that fails later
    // leaves nothing queued behind it.
    ctx.submit([]);
    memory.weights += norms.bytes();
    memory.largest_buffer = memory.largest_buffer.max(norms.bytes());
    Ok(Weights {
        matrices,
        norms,
        host,
        memory,
    })
}
