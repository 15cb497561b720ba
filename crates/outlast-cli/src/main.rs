//! The `outlast` command (being written, issue 6).
#![forbid(unsafe_code)]

fn main() {
    eprintln!("outlast: the command-line tool is not written yet");
    std::process::exit(2);
}
