// Unit u of row lr of slot $S (rows past `last` re-read row `last` and are never written).
fn unit_at$S(lr: u32, last: u32, u: u32) -> UnitT {
    let b = u / (QBLOCK$S / UNIT);
    let s = u % (QBLOCK$S / UNIT);
    return unit$S(min(lr, last) * (K / QBLOCK$S) + b, s);
}

// Unit u of the R = 4 rows of slot $S from its local row lr0.
fn rows_units$S(lr0: u32, last: u32, u: u32) -> Rows4 {
    return Rows4(
        unit_at$S(lr0, last, u),
        unit_at$S(lr0 + 1u, last, u),
        unit_at$S(lr0 + 2u, last, u),
        unit_at$S(lr0 + 3u, last, u),
    );
}

// Row lr of slot $S for unit u, dotted with every token's activations.
fn row$S(lr: u32, last: u32, u: u32, x0: XUnit, x1: XUnit, x2: XUnit, x3: XUnit) -> vec4<f32> {
    return tokens_dot(unit_at$S(lr, last, u), x0, x1, x2, x3);
}
