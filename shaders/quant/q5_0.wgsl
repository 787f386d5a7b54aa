// Q5_0: 32 elements, 4 nibble words + 1 word of 5th bits in the high-bit plane (bit 8i + 2c + p
// = element 8c + 2i + p); f16 d per block (two per word). y = d · (q − 16).
const QBLOCK$S: u32 = 32u;
const QPW$S: u32 = 4u;
const UNIT$S: u32 = 32u;

fn dq8$S(gb: u32, j: u32) -> Chunk {
    let w = word$S(gb * QPW$S + j);
    let h = word$S($HBASE + gb) >> (2u * j);
    let ev = (w & LO4) | ((h & BIT0) << 4u);
    let od = ((w >> 4u) & LO4) | (((h >> 1u) & BIT0) << 4u);
    let d = half$S(gb);
    return Chunk(d * (u8x4(ev) - 16.0), d * (u8x4(od) - 16.0));
}

fn unit$S(gb: u32, s: u32) -> Packed {
    let w = $W[gb];
    // Chunk c's 5th bits: bits 2c (even lanes) and 2c + 1 (odd lanes) of each byte of h.
    let h = vec4<u32>(word$S($HBASE + gb)) >> vec4<u32>(0u, 2u, 4u, 6u);
    let lo = (w & vec4<u32>(LO4)) | ((h & vec4<u32>(BIT0)) << vec4<u32>(4u));
    let hi = ((w >> vec4<u32>(4u)) & vec4<u32>(LO4)) | (((h >> vec4<u32>(1u)) & vec4<u32>(BIT0)) << vec4<u32>(4u));
    let d = half$S(gb);
    return Packed(lo, hi, vec2<f32>(d), vec2<f32>(16.0 * d));
}
