//! The OTLP logs messages the exporter sends, as prost types.
//!
//! Written by hand (field numbers from opentelemetry-proto's `logs.proto`, `common.proto`,
//! `resource.proto` and `logs_service.proto`) so the build needs neither `protoc` nor the
//! generated-code crates and their gRPC dependencies: only the messages Tapio sends are
//! here. The tests decode what the exporter sends with the reference Python types.

/// `opentelemetry.proto.collector.logs.v1.ExportLogsServiceRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExportLogsServiceRequest {
    /// One entry per node.
    #[prost(message, repeated, tag = "1")]
    pub resource_logs: Vec<ResourceLogs>,
}

/// `ResourceLogs`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ResourceLogs {
    /// The node.
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    /// Records by scope.
    #[prost(message, repeated, tag = "2")]
    pub scope_logs: Vec<ScopeLogs>,
    /// Semantic-conventions schema.
    #[prost(string, tag = "3")]
    pub schema_url: String,
}

/// `Resource`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Resource {
    /// Resource attributes.
    #[prost(message, repeated, tag = "1")]
    pub attributes: Vec<KeyValue>,
    /// Attributes left out.
    #[prost(uint32, tag = "2")]
    pub dropped_attributes_count: u32,
}

/// `ScopeLogs`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ScopeLogs {
    /// The emitting library.
    #[prost(message, optional, tag = "1")]
    pub scope: Option<InstrumentationScope>,
    /// The records.
    #[prost(message, repeated, tag = "2")]
    pub log_records: Vec<LogRecord>,
    /// Semantic-conventions schema.
    #[prost(string, tag = "3")]
    pub schema_url: String,
}

/// `InstrumentationScope`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InstrumentationScope {
    /// Name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Version.
    #[prost(string, tag = "2")]
    pub version: String,
}

/// `LogRecord`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LogRecord {
    /// When the fact happened.
    #[prost(fixed64, tag = "1")]
    pub time_unix_nano: u64,
    /// When the controller exported it.
    #[prost(fixed64, tag = "11")]
    pub observed_time_unix_nano: u64,
    /// `SeverityNumber`.
    #[prost(int32, tag = "2")]
    pub severity_number: i32,
    /// Severity as the record states it.
    #[prost(string, tag = "3")]
    pub severity_text: String,
    /// The error message.
    #[prost(message, optional, tag = "5")]
    pub body: Option<AnyValue>,
    /// Attributes.
    #[prost(message, repeated, tag = "6")]
    pub attributes: Vec<KeyValue>,
    /// Attributes left out.
    #[prost(uint32, tag = "7")]
    pub dropped_attributes_count: u32,
    /// Flags (none used).
    #[prost(fixed32, tag = "8")]
    pub flags: u32,
    /// The evidence type.
    #[prost(string, tag = "12")]
    pub event_name: String,
}

/// `KeyValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValue {
    /// Attribute name.
    #[prost(string, tag = "1")]
    pub key: String,
    /// Value.
    #[prost(message, optional, tag = "2")]
    pub value: Option<AnyValue>,
}

/// `AnyValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AnyValue {
    /// The value.
    #[prost(oneof = "any_value::Value", tags = "1, 2, 3, 4, 5, 6")]
    pub value: Option<any_value::Value>,
}

/// `AnyValue`'s oneof.
pub mod any_value {
    /// One value.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Value {
        /// String.
        #[prost(string, tag = "1")]
        StringValue(String),
        /// Bool.
        #[prost(bool, tag = "2")]
        BoolValue(bool),
        /// Integer.
        #[prost(int64, tag = "3")]
        IntValue(i64),
        /// Float.
        #[prost(double, tag = "4")]
        DoubleValue(f64),
        /// Array.
        #[prost(message, tag = "5")]
        ArrayValue(super::ArrayValue),
        /// Map.
        #[prost(message, tag = "6")]
        KvlistValue(super::KeyValueList),
    }
}

/// `ArrayValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ArrayValue {
    /// Items.
    #[prost(message, repeated, tag = "1")]
    pub values: Vec<AnyValue>,
}

/// `KeyValueList`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValueList {
    /// Entries.
    #[prost(message, repeated, tag = "1")]
    pub values: Vec<KeyValue>,
}

/// `SeverityNumber` values used.
pub mod severity {
    /// Unknown severity.
    pub const UNSPECIFIED: i32 = 0;
    /// debug.
    pub const DEBUG: i32 = 5;
    /// info.
    pub const INFO: i32 = 9;
    /// warning.
    pub const WARN: i32 = 13;
    /// error.
    pub const ERROR: i32 = 17;
    /// critical.
    pub const FATAL: i32 = 21;
}

/// `ExportLogsServiceResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExportLogsServiceResponse {
    /// Set when the collector refused some records.
    #[prost(message, optional, tag = "1")]
    pub partial_success: Option<ExportLogsPartialSuccess>,
}

/// `ExportLogsPartialSuccess`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExportLogsPartialSuccess {
    /// Records the collector refused.
    #[prost(int64, tag = "1")]
    pub rejected_log_records: i64,
    /// Why.
    #[prost(string, tag = "2")]
    pub error_message: String,
}
