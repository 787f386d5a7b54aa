// Q5_1: as Q5_0's payload and high-bit plane; scales word = d | m << 16. y = d · q + m.
const QBLOCK$S: u32 = 32u;
const QPW$S: u32 = 4u;
const UNIT$S: u32 = 32u;

fn dq8$S(gb: u32, j: u32) -> Chunk {
    let w = word$S(gb * QPW$S + j);
    let h = word$S($HBASE + gb) >> (2u * j);
    let ev = (w & LO4) | ((h & BIT0) << 4u);
    let od = ((w >> 4u) & LO4) | (((h >> 1u) & BIT0) << 4u);
    let dm = unpack2x16float(word$S($SBASE + gb));
    return Chunk(dm.x * u8x4(ev) + dm.y, dm.x * u8x4(od) + dm.y);
}

fn unit$S(gb: u32, s: u32) -> Packed {
    let w = $W[gb];
    // Chunk c's 5th bits: bits 2c (even lanes) and 2c + 1 (odd lanes) of each byte of h.
    let h = vec4<u32>(word$S($HBASE + gb)) >> vec4<u32>(0u, 2u, 4u, 6u);
    let lo = (w & vec4<u32>(LO4)) | ((h & vec4<u32>(BIT0)) << vec4<u32>(4u));
    let hi = ((w >> vec4<u32>(4u)) & vec4<u32>(LO4)) | (((h >> vec4<u32>(1u)) & vec4<u32>(BIT0)) << vec4<u32>(4u));
    let dm = unpack2x16float(word$S($SBASE + gb));
    return Packed(lo, hi, vec2<f32>(dm.x), vec2<f32>(-dm.y));
}
