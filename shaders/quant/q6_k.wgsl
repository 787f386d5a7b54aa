// Q6_K: 256 elements, 32 low-nibble words + 16 words of 2-bit highs (one per 16 elements:
// bits 8i + 2(2c + p) for element 8c + 2i + p); 5 scale words per block: 16 i8 scales (one per
// 16 elements), then d in the low half. y = (d · sc) · (q − 32). A mat-vec unit is 32
// elements: its two halves are the two 16-element scale groups.
const QBLOCK$S: u32 = 256u;
const QPW$S: u32 = 48u;
const UNIT$S: u32 = 32u;

// d · sc of 16-element group idx of block gb.
fn k6_scale$S(gb: u32, idx: u32) -> f32 {
    let sb = $SBASE + gb * 5u;
    let sc = f32(bitcast<i32>(word$S(sb + (idx >> 2u)) << (24u - 8u * (idx & 3u))) >> 24u);
    return unpack2x16float(word$S(sb + 4u)).x * sc;
}

fn dq8$S(gb: u32, j: u32) -> Chunk {
    let b = gb * QPW$S;
    let w = word$S(b + j);
    let h = word$S(b + 32u + (j >> 1u)) >> (4u * (j & 1u));
    let ev = (w & LO4) | ((h & BITS01) << 4u);
    let od = ((w >> 4u) & LO4) | (((h >> 2u) & BITS01) << 4u);
    let a = k6_scale$S(gb, j >> 1u);
    return Chunk(a * (u8x4(ev) - 32.0), a * (u8x4(od) - 32.0));
}

fn unit$S(gb: u32, s: u32) -> Packed {
    let w = $W[gb * 12u + s];
    let hw = $W[gb * 12u + 8u + (s >> 1u)];
    let odd = (s & 1u) == 1u;
    let h0 = select(hw.x, hw.z, odd);  // 2-bit highs of chunks 4s (bits 0-3), 4s+1 (bits 4-7)
    let h1 = select(hw.y, hw.w, odd);  // of chunks 4s+2, 4s+3
    let h = vec4<u32>(h0, h0 >> 4u, h1, h1 >> 4u);
    let lo = (w & vec4<u32>(LO4)) | ((h & vec4<u32>(BITS01)) << vec4<u32>(4u));
    let hi = ((w >> vec4<u32>(4u)) & vec4<u32>(LO4)) | (((h >> vec4<u32>(2u)) & vec4<u32>(BITS01)) << vec4<u32>(4u));
    let a = vec2<f32>(k6_scale$S(gb, 2u * s), k6_scale$S(gb, 2u * s + 1u));
    return Packed(lo, hi, a, 32.0 * a);
}
