//! Subcommands of the `est-server` binary that have grown their own files.

pub mod ca;
