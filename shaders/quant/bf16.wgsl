// BF16: 4 words per 8 elements (pairs, element 2i in the low half); f32 bits = bf16 << 16.
const QBLOCK: u32 = 8u;
const QPW: u32 = 4u;

fn dq8(gb: u32, j: u32) -> Chunk {
    let b = gb * QPW;
    let w = vec4<u32>(wq[b], wq[b + 1u], wq[b + 2u], wq[b + 3u]);
    return Chunk(bitcast<vec4<f32>>(w << vec4<u32>(16u)), bitcast<vec4<f32>>(w & vec4<u32>(0xFFFF0000u)));
}
