// Q6_K: 256 elements, 32 low-nibble words + 16 words of 2-bit highs (one per 16 elements:
// bits 8i + 2(2c + p) for element 8c + 2i + p); 5 scale words per block: 16 i8 scales (one per
// 16 elements), then d in the low half. y = (d · sc) · (q − 32).
const QBLOCK: u32 = 256u;
const QPW: u32 = 48u;

fn dq8(gb: u32, j: u32) -> Chunk {
    let b = gb * QPW;
    let w = wq[b + j];
    let h = wq[b + 32u + (j >> 1u)] >> (4u * (j & 1u));
    let ev = (w & 0x0F0F0F0Fu) | ((h & 0x03030303u) << 4u);
    let od = ((w >> 4u) & 0x0F0F0F0Fu) | (((h >> 2u) & 0x03030303u) << 4u);
    let sb = p.sbase + gb * 5u;
    let idx = j >> 1u;
    let sc = f32(bitcast<i32>(wq[sb + (idx >> 2u)] << (24u - 8u * (idx & 3u))) >> 24u);
    let a = unpack2x16float(wq[sb + 4u]).x * sc;
    return Chunk(a * (u8x4(ev) - 32.0), a * (u8x4(od) - 32.0));
}
