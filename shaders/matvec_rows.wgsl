// The R = 4 rows of slot $S from its local row lr0 for unit u, dotted with every token's
// activations (rows past `last` re-read row `last` and are never written).
fn rows$S(lr0: u32, last: u32, u: u32, x0: XUnit, x1: XUnit, x2: XUnit, x3: XUnit) -> Acc {
    let b = u / (QBLOCK$S / UNIT);
    let s = u % (QBLOCK$S / UNIT);
    let bpr = K / QBLOCK$S;
    let u0 = unit$S(min(lr0, last) * bpr + b, s);
    let u1 = unit$S(min(lr0 + 1u, last) * bpr + b, s);
    let u2 = unit$S(min(lr0 + 2u, last) * bpr + b, s);
    let u3 = unit$S(min(lr0 + 3u, last) * bpr + b, s);
    return rows_dot(u0, u1, u2, u3, x0, x1, x2, x3);
}
