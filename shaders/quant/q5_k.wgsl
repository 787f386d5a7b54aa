// Q5_K: 256 elements, 32 nibble words + 8 words of 5th bits (one per 32 elements, bit order
// as Q5_0); scales as Q4_K. y = (d · sc) · q − (dmin · m).
const QBLOCK: u32 = 256u;
const QPW: u32 = 40u;

fn dq8(gb: u32, j: u32) -> Chunk {
    let b = gb * QPW;
    let w = wq[b + j];
    let h = wq[b + 32u + (j >> 2u)] >> (2u * (j & 3u));
    let ev = (w & 0x0F0F0F0Fu) | ((h & 0x01010101u) << 4u);
    let od = ((w >> 4u) & 0x0F0F0F0Fu) | (((h >> 1u) & 0x01010101u) << 4u);
    let s = j >> 2u;
    let sb = p.sbase + gb * 5u;
    let dd = unpack2x16float(wq[sb]);
    let sh = 8u * (s & 3u);
    let a = dd.x * f32((wq[sb + 1u + (s >> 2u)] >> sh) & 0xFFu);
    let m = dd.y * f32((wq[sb + 3u + (s >> 2u)] >> sh) & 0xFFu);
    return Chunk(a * u8x4(ev) - m, a * u8x4(od) - m);
}
