// Q4_0: 32 elements, 4 nibble words (nibble e = element e); f16 d per block in the scales
// plane (two per word). y = d · (q − 8).
const QBLOCK$S: u32 = 32u;
const QPW$S: u32 = 4u;
const UNIT$S: u32 = 32u;

fn dq8$S(gb: u32, j: u32) -> Chunk {
    let w = word$S(gb * QPW$S + j);
    let d = half$S(gb);
    return Chunk(d * (u8x4(w & LO4) - 8.0), d * (u8x4((w >> 4u) & LO4) - 8.0));
}

fn unit$S(gb: u32, s: u32) -> Packed {
    let w = $W[gb];
    let d = half$S(gb);
    return Packed(w & vec4<u32>(LO4), (w >> vec4<u32>(4u)) & vec4<u32>(LO4), vec2<f32>(d), vec2<f32>(8.0 * d));
}
