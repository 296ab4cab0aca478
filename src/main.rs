//! The `imgate` binary: everything lives in the library; see `imgate --help`.

fn main() -> std::process::ExitCode {
    imgate::cli::main()
}
