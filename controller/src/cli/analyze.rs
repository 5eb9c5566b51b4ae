//! `plover analyze` (in progress).
