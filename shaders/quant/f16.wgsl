// F16: 4 words per 8 elements (pairs, element 2i in the low half), unchanged from GGUF.
const QBLOCK$S: u32 = 8u;
const QPW$S: u32 = 4u;
const UNIT$S: u32 = 8u;

fn f16_chunk$S(w: vec4<u32>) -> Chunk {
    let a0 = unpack2x16float(w.x);
    let a1 = unpack2x16float(w.y);
    let a2 = unpack2x16float(w.z);
    let a3 = unpack2x16float(w.w);
    return Chunk(vec4<f32>(a0.x, a1.x, a2.x, a3.x), vec4<f32>(a0.y, a1.y, a2.y, a3.y));
}

fn dq8$S(gb: u32, j: u32) -> Chunk {
    return f16_chunk$S($W[gb]);
}

fn unit$S(gb: u32, s: u32) -> Chunk {
    return f16_chunk$S($W[gb]);
}
