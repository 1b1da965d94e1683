//! `tokenmeter`: the companion binary of the tokenmeter filter (see the library).

fn main() -> std::process::ExitCode {
    tokenmeter_cli::main()
}
