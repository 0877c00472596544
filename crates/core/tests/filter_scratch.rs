use eventyard_core::filter::Filter;
#[test]
fn scratch() {
    for s in ["", "   ", "a", "a = ", "a = 1 AND b 5", "a = 1 b = 2", "(a = 1", "a IN 1", "a IN (1,", "a = 'abc", "a LIKE 5", "[cs-tenant-id = 1",
              "a = AND", "a IS 5", "a IS NOT 5", "NOT", "EXISTS a", "EXISTS(1)", "1 + = 2", "a = 99999999999999999999", "a LIKE 'x' ESCAPE 'ab'", "a LIKE 'x!' ESCAPE '!'",
              "a + 1 IS NULL", "a = 1\nAND b", "a === 1", "cs-tenant-id = 'x'", "sys. Label = 1", "a = 1)", "((a = 1)", "a NOT 1", "a = 1 AND (b = 2 OR c)", "a.b = 1"] {
        match Filter::sql(s) {
            Ok(f) => println!("{s:?} => OK {f}"),
            Err(e) => println!("{s:?} => {e}"),
        }
    }
    for s in ["a=1", "NOT NOT a = 1", "NOT (NOT a = 1)", "(a + 1) * 2 > -3 - -b", "a = -5", "a = - -5", "TRUE", "(TRUE)", "TRUE = a", "x iN (1, 'a', 2.5, 1e3) or y not like 'a!%' escape '!'",
              "[cs-tenant-id] = 'connectsoft' AND sys.Label = 'x' AND user.b IS NOT NULL AND EXISTS([c d])", "\"q\"\"x\" = 1", "a = 9223372036854775807 OR a = -9223372036854775808", "a = 1.0 AND b = 1e300 AND c = .5", "a = 1e999",
              "(a) = 1", "((a = 1))", "a = 1 AND b = 2 AND (c = 3 AND d = 4) OR e = 5", "-(5) = a"] {
        match Filter::sql(s) {
            Ok(f) => { let again = Filter::sql(&f.to_string()).unwrap(); println!("{s:?} => OK {f}   roundtrip={}", again == f) },
            Err(e) => println!("{s:?} => {e}"),
        }
    }
}
