//! Label names shared by the exporter's exposition, the dashboards and the analysis queries.

pub const NAMESPACE: &str = "namespace";
pub const SERVICE: &str = "service";
pub const ROUTE: &str = "route";
pub const REVISION: &str = "revision";
pub const ROLE: &str = "role";
pub const STATUS_CLASS: &str = "status_class";
pub const CODE: &str = "code";
pub const GRPC_STATUS: &str = "grpc_status";
pub const UPSTREAM_FAILURE: &str = "upstream_failure";
pub const WINDOW: &str = "window";
pub const QUANTILE: &str = "quantile";
