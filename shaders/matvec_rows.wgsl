// Unit u of row lr of slot $S (rows past `last` re-read row `last` and are never written).
fn unit_at$S(lr: u32, last: u32, u: u32) -> UnitT {
    let b = u / (QBLOCK$S / UNIT);
    let s = u % (QBLOCK$S / UNIT);
    return unit$S(min(lr, last) * (K / QBLOCK$S) + b, s);
}

// The R = 4 rows of slot $S from its local row lr0 for unit u, dotted with every token's
// activations.
fn rows$S(lr0: u32, last: u32, u: u32, x0: XUnit, x1: XUnit, x2: XUnit, x3: XUnit) -> Acc {
    let u0 = unit_at$S(lr0, last, u);
    let u1 = unit_at$S(lr0 + 1u, last, u);
    let u2 = unit_at$S(lr0 + 2u, last, u);
    let u3 = unit_at$S(lr0 + 3u, last, u);
    return rows_dot(u0, u1, u2, u3, x0, x1, x2, x3);
}

// Row lr of slot $S for unit u, dotted with every token's activations.
fn row$S(lr: u32, last: u32, u: u32, x0: XUnit, x1: XUnit, x2: XUnit, x3: XUnit) -> vec4<f32> {
    return tokens_dot(unit_at$S(lr, last, u), x0, x1, x2, x3);
}

// The R = 4 rows of slot $S from its local row lr0 for unit u, dotted with tokens t0 … t0 + 3
// (the several-token kernel's order: see `rows_dot_multi`).
fn rows_multi$S(lr0: u32, last: u32, u: u32, t0: u32, nt: u32) -> Acc {
    let u0 = unit_at$S(lr0, last, u);
    let u1 = unit_at$S(lr0 + 1u, last, u);
    let u2 = unit_at$S(lr0 + 2u, last, u);
    let u3 = unit_at$S(lr0 + 3u, last, u);
    return rows_dot_multi(u0, u1, u2, u3, u, t0, nt);
}
