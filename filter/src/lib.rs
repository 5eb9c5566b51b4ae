//! plover-filter (placeholder until its issue lands).
