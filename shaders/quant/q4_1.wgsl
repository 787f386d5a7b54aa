// Q4_1: 32 elements, 4 nibble words; scales word = d | m << 16. y = d · q + m.
const QBLOCK: u32 = 32u;
const QPW: u32 = 4u;

fn dq8(gb: u32, j: u32) -> Chunk {
    let w = wq[gb * QPW + j];
    let dm = unpack2x16float(wq[p.sbase + gb]);
    return Chunk(dm.x * u8x4(w & 0x0F0F0F0Fu) + dm.y, dm.x * u8x4((w >> 4u) & 0x0F0F0F0Fu) + dm.y);
}
