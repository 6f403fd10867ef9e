//! The `lazyboot` binary: everything is in the library, so that the command
//! line uses nothing the library does not also offer its tests.

fn main() -> anyhow::Result<()> {
    lazyboot::cli::main()
}
