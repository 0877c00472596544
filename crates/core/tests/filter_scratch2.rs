//! scratch
use eventyard_core::filter::Filter;
use eventyard_core::Properties;
fn run(stack: usize, s: String) -> bool {
    std::thread::Builder::new().stack_size(stack).spawn(move || {
        let f = Filter::sql(&s);
        if let Ok(f) = &f { let _ = f.matches(&Properties::new()); let t = f.to_string(); let g = Filter::sql(&t).unwrap(); assert_eq!(&g, f); let _ = f.clone(); }
        if let Err(e) = &f { println!("{}", e.to_string().chars().rev().take(120).collect::<String>().chars().rev().collect::<String>()); }
        f.is_ok()
    }).unwrap().join().unwrap()
}
#[test]
fn stack() {
    let n: usize = std::env::var("N").unwrap().parse().unwrap();
    let kb: usize = std::env::var("KB").unwrap().parse().unwrap();
    let only = std::env::var("CASE").unwrap();
    let cases = vec![
        ("pred", format!("{}a = 1{}", "(".repeat(n), ")".repeat(n))),
        ("exprp", format!("{}a{} = 1", "(".repeat(n), ")".repeat(n))),
        ("mixed", { let mut s = String::from("a = 1"); for _ in 0..n { s = format!("(({s}) OR b = 2) AND NOT c = 3"); } s }),
        ("exprnest", { let mut s = String::from("a"); for _ in 0..n { s = format!("-({s} * 2 + 1)"); } format!("{s} = 1") }),
        ("chain", format!("a = {}", vec!["1"; n].join(" + "))),
        ("chainnested", { let mut s = String::from("a"); for _ in 0..n { s = format!("({s} + 1 + 1 + 1)"); } format!("{s} = 1") }),
    ];
    for (name, s) in cases {
        if name != only { continue; }
        println!("RESULT {name} n={n} {kb}KB -> {:?}", run(kb * 1024, s.clone()));
    }
}
