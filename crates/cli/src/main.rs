//! `yard`: the eventyard command-line tool. All logic lives in the library (`eventyard_cli`).

fn main() -> std::process::ExitCode {
    eventyard_cli::main()
}
