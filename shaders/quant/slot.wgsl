// Word i of slot $S's buffer (a vec4 load and a component select: the whole part is one
// array<vec4<u32>>, so the 16-byte payload loads need no second binding).
fn word$S(i: u32) -> u32 {
    return $W[i >> 2u][i & 3u];
}

// f16 number i of the scales plane (halves packed two per word).
fn half$S(i: u32) -> f32 {
    return unpack2x16float(word$S($SBASE + (i >> 1u)))[i & 1u];
}
