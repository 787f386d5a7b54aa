//! CPU side of the quantized formats, all bit-exact (`to_bits()` equal):
//! - `quant::dequantize` against gguf-py's `gguf.quants.dequantize` on the committed fixtures
//!   (`tests/data/quant_blocks.bin`, written by `pkg-scripts/make_quant_fixtures.py`: random
//!   blocks with sane scales plus real blocks from the Gemma 3 270M Q4_K_M file);
//! - the GPU layout: `GpuLayout::repack` then `GpuLayout::dequantize` (the shaders' arithmetic)
//!   against `quant::dequantize`, for every type, several rows, fixtures and synthetic blocks;
//! - the GPU-memory overhead of the layout (≤ 1.1 × the GGUF bytes).

use gemma_wgpu::gguf::GgmlType;
use gemma_wgpu::quant::{dequantize, GpuLayout};
use gemma_wgpu::reference::quant::synthetic_blocks;

/// The supported types: the same list the kernels are built for.
use gemma_wgpu::kernels::matmul::TYPES;

struct Record {
    ty: GgmlType,
    real: bool,
    bytes: Vec<u8>,
    want: Vec<f32>,
}

fn fixtures() -> Vec<Record> {
    let data = include_bytes!("data/quant_blocks.bin");
    assert_eq!(&data[..4], b"QBLK", "bad fixture magic");
    let mut at = 4;
    let u32_at = |at: &mut usize| {
        let v = u32::from_le_bytes(data[*at..*at + 4].try_into().unwrap());
        *at += 4;
        v
    };
    let version = u32_at(&mut at);
    assert_eq!(
        version, 1,
        "fixture version {version}: regenerate with pkg-scripts/make_quant_fixtures.py"
    );
    let n = u32_at(&mut at);
    let mut out = Vec::new();
    for _ in 0..n {
        let ty = GgmlType::from_id(u32_at(&mut at)).unwrap();
        let real = u32_at(&mut at) == 1;
        let nb = u32_at(&mut at) as usize;
        let bytes = data[at..at + nb].to_vec();
        at += nb;
        let ne = u32_at(&mut at) as usize;
        let want = data[at..at + 4 * ne]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        at += 4 * ne;
        out.push(Record {
            ty,
            real,
            bytes,
            want,
        });
    }
    assert_eq!(at, data.len(), "trailing fixture bytes");
    out
}

fn assert_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let bad: Vec<String> = got
        .iter()
        .zip(want)
        .enumerate()
        .filter(|(_, (g, w))| g.to_bits() != w.to_bits())
        .take(8)
        .map(|(i, (g, w))| {
            format!(
                "  [{i}] got {g:e} ({:#010x}) want {w:e} ({:#010x})",
                g.to_bits(),
                w.to_bits()
            )
        })
        .collect();
    assert!(bad.is_empty(), "{what}: not bit-exact\n{}", bad.join("\n"));
}

#[test]
fn dequantize_matches_gguf_py_bit_for_bit() {
    let records = fixtures();
    for ty in TYPES {
        assert!(records.iter().any(|r| r.ty == ty), "no fixture for {ty}");
    }
    for ty in [GgmlType::Q5_0, GgmlType::Q8_0, GgmlType::Q4K, GgmlType::Q6K] {
        assert!(
            records.iter().any(|r| r.ty == ty && r.real),
            "no real {ty} blocks"
        );
    }
    for r in &records {
        let got = dequantize(r.ty, &r.bytes, r.want.len()).unwrap();
        assert_bits(
            &format!("{} ({})", r.ty, if r.real { "real" } else { "random" }),
            &got,
            &r.want,
        );
    }
}

/// Repacks `bytes` as `rows` rows and checks the GPU-layout decode against the GGUF decode.
fn roundtrip(what: &str, ty: GgmlType, bytes: &[u8], rows: u32) {
    let elems = bytes.len() as u64 / ty.block_bytes() * ty.block_elems();
    let k = (elems / rows as u64) as u32;
    let layout = GpuLayout::new(what, ty, k).unwrap();
    let words = layout.repack(bytes);
    assert_eq!(words.len() as u64, layout.words(rows), "{what}: word count");
    let got = layout.dequantize(&words, rows);
    let want = dequantize(ty, bytes, elems as usize).unwrap();
    assert_bits(&format!("{what} {ty} rows {rows} k {k}"), &got, &want);
}

#[test]
fn gpu_layout_roundtrip_fixtures() {
    for r in fixtures() {
        let be = GpuLayout::new("fixture", r.ty, 256).unwrap().block_elems() as usize;
        let elems = r.want.len();
        // One row of everything, and (where it splits into whole blocks) several rows.
        roundtrip("fixture", r.ty, &r.bytes, 1);
        for rows in [2usize, 3, 8] {
            if elems % (rows * be) == 0 {
                roundtrip("fixture", r.ty, &r.bytes, rows as u32);
            }
        }
    }
}

#[test]
fn gpu_layout_roundtrip_synthetic() {
    for ty in TYPES {
        let be = GpuLayout::new("t", ty, 256).unwrap().block_elems() as u64;
        for (k, rows) in [(be, 1u32), (be, 7), (4 * be, 3), (1024.max(be), 5)] {
            let n_blocks = (k * rows as u64 / ty.block_elems()) as usize;
            let bytes = synthetic_blocks(ty, n_blocks, k * 31 + rows as u64);
            roundtrip("synthetic", ty, &bytes, rows);
        }
    }
}

#[test]
fn gpu_layout_overhead_within_ten_percent() {
    // Measured ratios (printed with --nocapture): 1.000 for F32/F16/BF16 and the 32-element
    // types (an odd block count adds one half-word of scales per part), 1.028 Q4_K, 1.023 Q5_K,
    // 1.010 Q6_K.
    for ty in TYPES {
        for (k, rows) in [(2048u32, 640u32), (1024, 1), (256, 7)] {
            let layout = GpuLayout::new("t", ty, k).unwrap();
            let gguf = layout.row_bytes() * rows as u64;
            let gpu = layout.words(rows) * 4;
            let ratio = gpu as f64 / gguf as f64;
            if rows == 640 {
                println!("{ty}: GPU/GGUF bytes = {gpu}/{gguf} = {ratio:.4}");
            }
            assert!(ratio <= 1.1, "{ty} k {k} rows {rows}: ratio {ratio}");
        }
    }
}

#[test]
fn layout_rejects_bad_shapes_and_types() {
    let e = GpuLayout::new("blk.0.attn_q.weight", GgmlType::Q4K, 640).unwrap_err();
    let s = e.to_string();
    assert!(
        s.contains("blk.0.attn_q.weight") && s.contains("256"),
        "{s}"
    );
    let e = GpuLayout::new("w", GgmlType::F16, 12).unwrap_err();
    assert!(e.to_string().contains("multiple of 8"), "{e}");
    let e = GpuLayout::new("blk.3.ffn_up.weight", GgmlType::Q2K, 256).unwrap_err();
    let s = e.to_string();
    assert!(
        s.contains("blk.3.ffn_up.weight") && s.contains("Q2_K"),
        "{s}"
    );
    assert!(dequantize(GgmlType::Q4_0, &[0u8; 17], 32).is_err());
    assert!(dequantize(GgmlType::Q4_0, &[0u8; 18], 16).is_err());
    assert_eq!(dequantize(GgmlType::F32, &[0u8; 12], 3).unwrap().len(), 3);
}
