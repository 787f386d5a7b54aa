// Q8_0: 32 elements, 8 words: word 2j holds the i8 of elements 8j+0,2,4,6, word 2j+1 of
// 8j+1,3,5,7; f16 d per block (two per word). y = q · d. The mat-vec unpacks q + 128 (the
// sign bit flipped: an unsigned byte) and subtracts 128·d per element through `b`.
const QBLOCK$S: u32 = 32u;
const QPW$S: u32 = 8u;
const UNIT$S: u32 = 32u;

fn dq8$S(gb: u32, j: u32) -> Chunk {
    let b = gb * QPW$S + 2u * j;
    let d = half$S(gb);
    return Chunk(i8x4(word$S(b)) * d, i8x4(word$S(b + 1u)) * d);
}

fn unit$S(gb: u32, s: u32) -> Packed {
    let a = $W[2u * gb] ^ vec4<u32>(SIGN8);
    let b = $W[2u * gb + 1u] ^ vec4<u32>(SIGN8);
    let d = half$S(gb);
    return Packed(vec4<u32>(a.x, a.z, b.x, b.z), vec4<u32>(a.y, a.w, b.y, b.w), vec2<f32>(d), vec2<f32>(128.0 * d));
}
