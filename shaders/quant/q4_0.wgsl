// Q4_0: 32 elements, 4 nibble words (nibble e = element e); f16 d per block in the scales
// plane (two per word). y = d · (q − 8).
const QBLOCK: u32 = 32u;
const QPW: u32 = 4u;

fn dq8(gb: u32, j: u32) -> Chunk {
    let w = wq[gb * QPW + j];
    let d = half_at(p.sbase, gb);
    return Chunk(d * (u8x4(w & 0x0F0F0F0Fu) - 8.0), d * (u8x4((w >> 4u) & 0x0F0F0F0Fu) - 8.0));
}
