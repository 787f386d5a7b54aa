// BF16: 4 words per 8 elements (pairs, element 2i in the low half); f32 bits = bf16 << 16.
const QBLOCK$S: u32 = 8u;
const QPW$S: u32 = 4u;
const UNIT$S: u32 = 8u;

fn bf16_chunk$S(w: vec4<u32>) -> Chunk {
    return Chunk(bitcast<vec4<f32>>(w << vec4<u32>(16u)), bitcast<vec4<f32>>(w & vec4<u32>(0xFFFF0000u)));
}

fn dq8$S(gb: u32, j: u32) -> Chunk {
    return bf16_chunk$S($W[gb]);
}

fn unit$S(gb: u32, s: u32) -> Chunk {
    return bf16_chunk$S($W[gb]);
}
