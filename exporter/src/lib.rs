//! plover-exporter (in progress)
pub mod store;
pub mod window;
