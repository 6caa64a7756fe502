use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    node_agent::Args::parse().run()
}
