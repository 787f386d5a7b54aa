// Q5_K: 256 elements, 32 nibble words + 8 words of 5th bits (one per 32 elements, bit order
// as Q5_0); scales as Q4_K. y = (d · sc) · q − (dmin · m). A mat-vec unit is one sub-block.
const QBLOCK$S: u32 = 256u;
const QPW$S: u32 = 40u;
const UNIT$S: u32 = 32u;

// (d · sc, dmin · m) of sub-block s of block gb.
fn k5_affine$S(gb: u32, s: u32) -> vec2<f32> {
    let sb = $SBASE + gb * 5u;
    let dd = unpack2x16float(word$S(sb));
    let sh = 8u * (s & 3u);
    let a = dd.x * f32((word$S(sb + 1u + (s >> 2u)) >> sh) & 0xFFu);
    let m = dd.y * f32((word$S(sb + 3u + (s >> 2u)) >> sh) & 0xFFu);
    return vec2<f32>(a, m);
}

fn dq8$S(gb: u32, j: u32) -> Chunk {
    let b = gb * QPW$S;
    let w = word$S(b + j);
    let h = word$S(b + 32u + (j >> 2u)) >> (2u * (j & 3u));
    let ev = (w & LO4) | ((h & BIT0) << 4u);
    let od = ((w >> 4u) & LO4) | (((h >> 1u) & BIT0) << 4u);
    let am = k5_affine$S(gb, j >> 2u);
    return Chunk(am.x * u8x4(ev) - am.y, am.x * u8x4(od) - am.y);
}

fn unit$S(gb: u32, s: u32) -> Packed {
    let w = $W[gb * 10u + s];
    // Chunk c's 5th bits: bits 2c (even lanes) and 2c + 1 (odd lanes) of each byte of h.
    let h = vec4<u32>(word$S(gb * QPW$S + 32u + s)) >> vec4<u32>(0u, 2u, 4u, 6u);
    let lo = (w & vec4<u32>(LO4)) | ((h & vec4<u32>(BIT0)) << vec4<u32>(4u));
    let hi = ((w >> vec4<u32>(4u)) & vec4<u32>(LO4)) | (((h >> vec4<u32>(1u)) & vec4<u32>(BIT0)) << vec4<u32>(4u));
    let am = k5_affine$S(gb, s);
    return Packed(lo, hi, vec2<f32>(am.x), vec2<f32>(am.y));
}
