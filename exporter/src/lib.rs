//! plover-exporter (placeholder until its issue lands).
