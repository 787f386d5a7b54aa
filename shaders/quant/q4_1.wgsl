// Q4_1: 32 elements, 4 nibble words; scales word = d | m << 16. y = d · q + m.
const QBLOCK$S: u32 = 32u;
const QPW$S: u32 = 4u;
const UNIT$S: u32 = 32u;

fn dq8$S(gb: u32, j: u32) -> Chunk {
    let w = word$S(gb * QPW$S + j);
    let dm = unpack2x16float(word$S($SBASE + gb));
    return Chunk(dm.x * u8x4(w & LO4) + dm.y, dm.x * u8x4((w >> 4u) & LO4) + dm.y);
}

fn unit$S(gb: u32, s: u32) -> Packed {
    let w = $W[gb];
    let dm = unpack2x16float(word$S($SBASE + gb));
    return Packed(w & vec4<u32>(LO4), (w >> vec4<u32>(4u)) & vec4<u32>(LO4), vec2<f32>(dm.x), vec2<f32>(-dm.y));
}
