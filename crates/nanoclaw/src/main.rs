fn main() -> std::process::ExitCode {
    nanoclaw::cli::main()
}
