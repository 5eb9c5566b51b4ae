//! plover-controller (placeholder until its issue lands).
