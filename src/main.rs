//! The `tenantd` binary: parse the command line, build, run. Everything lives in the library.

fn main() -> std::process::ExitCode {
    tenantd::cli::main()
}
