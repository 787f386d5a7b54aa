// Q8_0: 32 elements, 8 words: word 2j holds the i8 of elements 8j+0,2,4,6, word 2j+1 of
// 8j+1,3,5,7; f16 d per block (two per word). y = q · d.
const QBLOCK: u32 = 32u;
const QPW: u32 = 8u;

fn dq8(gb: u32, j: u32) -> Chunk {
    let b = gb * QPW + 2u * j;
    let d = half_at(p.sbase, gb);
    return Chunk(i8x4(wq[b]) * d, i8x4(wq[b + 1u]) * d);
}
