// F32: 8 words per 8 elements, unchanged from GGUF. No scales.
const QBLOCK$S: u32 = 8u;
const QPW$S: u32 = 8u;
const UNIT$S: u32 = 8u;

fn f32_chunk$S(gb: u32) -> Chunk {
    let a = bitcast<vec4<f32>>($W[2u * gb]);
    let b = bitcast<vec4<f32>>($W[2u * gb + 1u]);
    return Chunk(vec4<f32>(a.x, a.z, b.x, b.z), vec4<f32>(a.y, a.w, b.y, b.w));
}

fn dq8$S(gb: u32, j: u32) -> Chunk {
    return f32_chunk$S(gb);
}

fn unit$S(gb: u32, s: u32) -> Chunk {
    return f32_chunk$S(gb);
}
