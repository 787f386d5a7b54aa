// Q4_K: 256 elements, 32 nibble words; 5 scale words per block: d | dmin << 16, then the 8
// sub-block scales sc and the 8 mins m as bytes (the 6-bit GGUF fields, decoded at repack).
// Sub-block s = j / 4 (32 elements). y = (d · sc) · q − (dmin · m).
const QBLOCK: u32 = 256u;
const QPW: u32 = 32u;

fn dq8(gb: u32, j: u32) -> Chunk {
    let w = wq[gb * QPW + j];
    let s = j >> 2u;
    let sb = p.sbase + gb * 5u;
    let dd = unpack2x16float(wq[sb]);
    let sh = 8u * (s & 3u);
    let a = dd.x * f32((wq[sb + 1u + (s >> 2u)] >> sh) & 0xFFu);
    let m = dd.y * f32((wq[sb + 3u + (s >> 2u)] >> sh) & 0xFFu);
    return Chunk(a * u8x4(w & 0x0F0F0F0Fu) - m, a * u8x4((w >> 4u) & 0x0F0F0F0Fu) - m);
}
