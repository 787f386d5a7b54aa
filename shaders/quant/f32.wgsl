// F32: 8 words per 8 elements, unchanged from GGUF. No scales.
const QBLOCK: u32 = 8u;
const QPW: u32 = 8u;

fn dq8(gb: u32, j: u32) -> Chunk {
    let b = gb * QPW;
    return Chunk(
        bitcast<vec4<f32>>(vec4<u32>(wq[b], wq[b + 2u], wq[b + 4u], wq[b + 6u])),
        bitcast<vec4<f32>>(vec4<u32>(wq[b + 1u], wq[b + 3u], wq[b + 5u], wq[b + 7u])),
    );
}
