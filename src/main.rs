use clap::Parser;

fn main() {
    let cli = sparc3::cli::Cli::parse();
    if let Err(e) = sparc3::cli::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(sparc3::error::exit_code(&e));
    }
}
