// Quant type modules: shared helpers. Inserted (with one type module after it) at the
// QUANT placeholder line of matvec.wgsl, matmul.wgsl and embed.wgsl.
//
// Contract with the kernel: it declares `wq: array<u32>` (one part of a matrix in the GPU
// layout of src/quant/layout.rs: payload plane, then scales plane) and a uniform `p` whose
// `sbase` field is the word offset of the scales plane. Each type module defines
//   const QBLOCK: u32      elements per block (8 for F32/F16/BF16)
//   const QPW: u32         payload words per block
//   fn dq8(gb: u32, j: u32) -> Chunk
// returning elements 8j..8j+7 of block gb (gb = row · blocks_per_row + block) as
// ev = (e0, e2, e4, e6), od = (e1, e3, e5, e7): the layout orders bits so one masked shift
// yields four bytes of one parity. Arithmetic is f32, in gguf-py's order (bit-exact with
// quant::dequantize where the compiler does not contract a·b + c into an fma).

struct Chunk {
    ev: vec4<f32>,
    od: vec4<f32>,
}

// The four bytes of v as unsigned values, byte 0 first.
fn u8x4(v: u32) -> vec4<f32> {
    return vec4<f32>((vec4<u32>(v) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(0xFFu));
}

// The four bytes of v as signed values, byte 0 first.
fn i8x4(v: u32) -> vec4<f32> {
    return vec4<f32>(bitcast<vec4<i32>>(vec4<u32>(v) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u));
}

// f16 number i of a plane of halves packed two per word, starting at word `base`.
fn half_at(base: u32, i: u32) -> f32 {
    return unpack2x16float(wq[base + (i >> 1u)])[i & 1u];
}
