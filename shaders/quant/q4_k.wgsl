// Q4_K: 256 elements, 32 nibble words; 5 scale words per block: d | dmin << 16, then the 8
// sub-block scales sc and the 8 mins m as bytes (the 6-bit GGUF fields, decoded at repack).
// Sub-block s = j / 4 (32 elements). y = (d · sc) · q − (dmin · m). A mat-vec unit is one
// sub-block.
const QBLOCK$S: u32 = 256u;
const QPW$S: u32 = 32u;
const UNIT$S: u32 = 32u;

// (d · sc, dmin · m) of sub-block s of block gb.
fn k4_affine$S(gb: u32, s: u32) -> vec2<f32> {
    let sb = $SBASE + gb * 5u;
    let dd = unpack2x16float(word$S(sb));
    let sh = 8u * (s & 3u);
    let a = dd.x * f32((word$S(sb + 1u + (s >> 2u)) >> sh) & 0xFFu);
    let m = dd.y * f32((word$S(sb + 3u + (s >> 2u)) >> sh) & 0xFFu);
    return vec2<f32>(a, m);
}

fn dq8$S(gb: u32, j: u32) -> Chunk {
    let w = word$S(gb * QPW$S + j);
    let am = k4_affine$S(gb, j >> 2u);
    return Chunk(am.x * u8x4(w & LO4) - am.y, am.x * u8x4((w >> 4u) & LO4) - am.y);
}

fn unit$S(gb: u32, s: u32) -> Packed {
    let w = $W[gb * 8u + s];
    let am = k4_affine$S(gb, s);
    return Packed(w & vec4<u32>(LO4), (w >> vec4<u32>(4u)) & vec4<u32>(LO4), vec2<f32>(am.x), vec2<f32>(am.y));
}
