// Quant type modules: what every kernel that reads a weight matrix shares. Inserted once at the
// QUANT placeholder of matvec.wgsl, matmul.wgsl and embed.wgsl, followed by one *slot* per bound
// matrix: slot.wgsl and a type module (shaders/quant/<type>.wgsl), with `$W` replaced by the
// slot's binding (`wq`, or `w0`… when a kernel binds several matrices), `$S` by the suffix of
// the slot's names (``, or `0`…), and `$HBASE`/`$SBASE` by the expressions giving the word
// offsets of its high-bit and scales planes (src/quant/layout.rs).
//
// Contract with the kernel: the slot's binding is `$W: array<vec4<u32>>`, one part of a matrix
// in the GPU layout of src/quant/layout.rs (payload plane, high-bit plane, scales plane), padded
// to 16 bytes. Each type module defines
//   const QBLOCK$S: u32    elements per block (8 for F32/F16/BF16)
//   const QPW$S: u32       payload words per block (a multiple of 4: whole vec4 loads)
//   const UNIT$S: u32      elements of one mat-vec unit (32, or 8 for the float types)
//   fn dq8$S(gb, j) -> Chunk   elements 8j..8j+7 of block gb (gb = row · blocks_per_row +
//        block) as ev = (e0, e2, e4, e6), od = (e1, e3, e5, e7): the layout orders bits so one
//        masked shift yields four bytes of one parity. Arithmetic is f32, in gguf-py's order
//        (bit-exact with quant::dequantize where the compiler does not contract a·b + c).
//   fn unit$S(gb, s) -> Packed (block types) / Chunk (F32, F16, BF16)   unit s (elements
//        s·UNIT … of block gb) for the mat-vec: packed quants and per-half affine maps, so a dot
//        product costs one conversion and one multiply per element and the scales are applied
//        once per half (see `Packed`).

struct Chunk {
    ev: vec4<f32>,
    od: vec4<f32>,
}

// One mat-vec unit of a block type (32 elements = 4 chunks), still packed: byte i of lo[c] is
// the quant of chunk c's even lane i (element 8c + 2i), byte i of hi[c] of its odd lane; element
// value = a[h] · q − b[h] for the half h the chunk lies in (chunks 0-1, 2-3). Twelve registers:
// a thread can hold the units of several rows while their loads are in flight, and
// unpacks each only as it dots it with the activations.
struct Packed {
    lo: vec4<u32>,
    hi: vec4<u32>,
    a: vec2<f32>,
    b: vec2<f32>,
}

const LO4: u32 = 0x0F0F0F0Fu;    // the low nibble of each byte
const BIT0: u32 = 0x01010101u;   // bit 0 of each byte
const BITS01: u32 = 0x03030303u; // bits 0-1 of each byte
const SIGN8: u32 = 0x80808080u;  // bit 7 of each byte

// The four bytes of v as unsigned values, byte 0 first. Each byte goes into the low mantissa
// bits of 2^23 and 2^23 is subtracted: exact, and integer logic plus one add instead of a
// conversion per byte (`f32(u32)`, `unpack4x8unorm`: quarter-rate on NVIDIA GPUs). On an H100
// the mat-vec's streaming bandwidth stayed the same either way (conversions do not bound it).
const MAGIC: u32 = 0x4B000000u;    // 2^23 as f32 bits
fn u8x4(v: u32) -> vec4<f32> {
    let b = (vec4<u32>(v) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(0xFFu);
    return bitcast<vec4<f32>>(b | vec4<u32>(MAGIC)) - vec4<f32>(8388608.0);
}

// The four bytes of v as signed values, byte 0 first (as `u8x4`, offset by 128).
fn i8x4(v: u32) -> vec4<f32> {
    return u8x4(v ^ SIGN8) - vec4<f32>(128.0);
}
