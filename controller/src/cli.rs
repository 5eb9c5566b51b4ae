//! The `plover` command line's subcommands (the binary in `main.rs` only parses and dispatches).

pub mod analyze;
