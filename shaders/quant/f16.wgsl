// F16: 4 words per 8 elements (pairs, element 2i in the low half), unchanged from GGUF.
const QBLOCK: u32 = 8u;
const QPW: u32 = 4u;

fn dq8(gb: u32, j: u32) -> Chunk {
    let b = gb * QPW;
    let a0 = unpack2x16float(wq[b]);
    let a1 = unpack2x16float(wq[b + 1u]);
    let a2 = unpack2x16float(wq[b + 2u]);
    let a3 = unpack2x16float(wq[b + 3u]);
    return Chunk(vec4<f32>(a0.x, a1.x, a2.x, a3.x), vec4<f32>(a0.y, a1.y, a2.y, a3.y));
}
