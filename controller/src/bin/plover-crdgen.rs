//! Prints the `Canary` CRD generated from the Rust types (`plover crd` does the same).

fn main() -> std::process::ExitCode {
    match plover_controller::canary::crd::crd_yaml() {
        Ok(yaml) => {
            print!("{yaml}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("plover-crdgen: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
