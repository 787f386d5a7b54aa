// Q5_1: as Q5_0's payload; scales word = d | m << 16. y = d · q + m.
const QBLOCK: u32 = 32u;
const QPW: u32 = 5u;

fn dq8(gb: u32, j: u32) -> Chunk {
    let b = gb * QPW;
    let w = wq[b + j];
    let h = wq[b + 4u] >> (2u * j);
    let ev = (w & 0x0F0F0F0Fu) | ((h & 0x01010101u) << 4u);
    let od = ((w >> 4u) & 0x0F0F0F0Fu) | (((h >> 1u) & 0x01010101u) << 4u);
    let dm = unpack2x16float(wq[p.sbase + gb]);
    return Chunk(dm.x * u8x4(ev) + dm.y, dm.x * u8x4(od) + dm.y);
}
