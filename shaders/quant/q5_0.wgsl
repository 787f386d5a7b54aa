// Q5_0: 32 elements, 4 nibble words + 1 word of 5th bits (bit 8i + 2c + p = element
// 8c + 2i + p); f16 d per block (two per word). y = d · (q − 16).
const QBLOCK: u32 = 32u;
const QPW: u32 = 5u;

fn dq8(gb: u32, j: u32) -> Chunk {
    let b = gb * QPW;
    let w = wq[b + j];
    let h = wq[b + 4u] >> (2u * j);
    let ev = (w & 0x0F0F0F0Fu) | ((h & 0x01010101u) << 4u);
    let od = ((w >> 4u) & 0x0F0F0F0Fu) | (((h >> 1u) & 0x01010101u) << 4u);
    let d = half_at(p.sbase, gb);
    return Chunk(d * (u8x4(ev) - 16.0), d * (u8x4(od) - 16.0));
}
