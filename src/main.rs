use std::process::ExitCode;

fn main() -> ExitCode {
    model_operator::cli::main()
}
